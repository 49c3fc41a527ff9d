"""Shared pieces: spec, errors, manifest, runner, models, preprocessing, tokenizers, metrics. They import nothing above them."""
