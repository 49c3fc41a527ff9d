"""The torch-free tokenizer: open_clip's ids, bundled by export and release, used by the runtime."""
from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest

from clip_export.errors import ClipExportError, IntegrityError
from clip_export.evalset import load_evalset
from clip_export.manifest import read_manifest, write_manifest
from clip_export.models import sha256_file
from clip_export.release import release
from clip_export.runtime import ClipOnnx
from clip_export.tokenizer import PROBE_TEXTS, VOCAB_NAME, ClipBpeTokenizer, bundled_vocab_source
from clip_export.verify import verify

from .helpers import flip_byte


@pytest.fixture(scope="module")
def reference_tokenizer():  # type: ignore[no-untyped-def]
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.mark.parametrize("context_length", [77, 8])
def test_same_ids_as_open_clip(reference_tokenizer, context_length: int) -> None:  # type: ignore[no-untyped-def]
    ours = ClipBpeTokenizer(bundled_vocab_source(reference_tokenizer), context_length)
    for text in [*PROBE_TEXTS, *load_evalset().captions]:
        expected = reference_tokenizer([text], context_length=context_length).numpy()
        got = ours([text])
        assert got.dtype == np.int64 and np.array_equal(got, expected), text
    assert (ours.sot_token_id, ours.eot_token_id) == (49406, 49407)


def test_only_the_plain_clip_tokenizer_is_reproduced(reference_tokenizer) -> None:  # type: ignore[no-untyped-def]
    from open_clip.tokenizer import SimpleTokenizer

    assert bundled_vocab_source(reference_tokenizer) is not None
    assert bundled_vocab_source(SimpleTokenizer(clean="canonicalize")) is None
    assert bundled_vocab_source(SimpleTokenizer(additional_special_tokens=["<pad>"])) is None


def test_a_file_that_is_not_a_merges_file_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "vocab.txt.gz"
    with gzip.open(bogus, "wt") as handle:
        handle.write("version\na b\n")
    with pytest.raises(ClipExportError, match="is not a CLIP BPE merges file"):
        ClipBpeTokenizer(bogus)


def test_export_bundles_the_vocabulary(tiny_vit_dir: Path) -> None:
    record = read_manifest(tiny_vit_dir)["tokenizer"]["bpe_vocab"]
    assert record["path"] == VOCAB_NAME and sha256_file(tiny_vit_dir / VOCAB_NAME) == record["sha256"]


def test_release_ships_it_and_the_runtime_tokenizes_without_torch(tiny_vit_copy: Path, tmp_path: Path) -> None:
    assert verify(tiny_vit_copy).passed
    directory = release([tiny_vit_copy], tag="v1", out=tmp_path / "dist").directory
    assert "tiny-vit-tokenizer-bpe.txt.gz" in (directory / "SHA256SUMS").read_text()
    script = (
        "import sys\n"
        "from clip_export.runtime import ClipOnnx\n"
        "runtime = ClipOnnx.from_release(sys.argv[1])\n"
        "vectors = runtime.embed_texts(['a photo of a cat', ''])\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'torch was imported'\n"
        "print(vectors.shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "(2, 32)" in done.stdout


def test_runtime_refuses_a_tampered_vocabulary(tiny_vit_copy: Path) -> None:
    flip_byte(tiny_vit_copy / VOCAB_NAME)
    with pytest.raises(IntegrityError, match="refusing to load the tokenizer: tokenizer-bpe.txt.gz does not match its sha256"):
        ClipOnnx.from_release(tiny_vit_copy)


def test_an_export_without_a_vocabulary_falls_back_to_open_clip(tiny_vit_copy: Path) -> None:
    """Artifacts exported before the vocabulary was bundled still serve captions, through open_clip."""
    manifest = read_manifest(tiny_vit_copy)
    del manifest["tokenizer"]["bpe_vocab"]
    write_manifest(tiny_vit_copy, manifest)
    (tiny_vit_copy / VOCAB_NAME).unlink()
    runtime = ClipOnnx.from_release(tiny_vit_copy)
    expected = open_clip.get_tokenizer("ViT-B-32")(["a cat"]).numpy()
    assert np.array_equal(runtime.tokenize(["a cat"]), expected)


def test_the_merge_cache_stays_bounded(reference_tokenizer) -> None:  # type: ignore[no-untyped-def]
    """A long-running server sees endless new words; the cache must not grow with them."""
    bounded = ClipBpeTokenizer(bundled_vocab_source(reference_tokenizer), cache_limit=10)
    words = [f"zq{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(60)]  # 60 distinct words
    got = bounded(words)
    assert len(bounded._pieces) <= 10 + 2
    assert np.array_equal(got, reference_tokenizer(words).numpy())
