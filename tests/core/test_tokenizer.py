"""The torch-free tokenizer: open_clip's ids from a bundled tokenizer.json, every family."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest

from clip_export.core.errors import ClipExportError, IntegrityError
from clip_export.core.evalset import load_evalset
from clip_export.core.manifest import read_manifest, write_manifest
from clip_export.core.models import sha256_file
from clip_export.core.tokenizer import PROBE_TEXTS, TOKENIZER_NAME, TextTokenizer, clean_text, clip_bpe_tokenizer
from clip_export.runtime import ClipOnnx
from clip_export.stages.release.release import release
from clip_export.stages.verify import verify

from ..helpers import flip_byte


@pytest.fixture(scope="module")
def reference_tokenizer():  # type: ignore[no-untyped-def]
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def clip_tokenizer() -> TextTokenizer:
    return TextTokenizer(clip_bpe_tokenizer(Path(open_clip.tokenizer.default_bpe())), "lower", 77, 0)


@pytest.mark.parametrize("context_length", [77, 8])
def test_clip_bpe_gives_open_clips_ids(reference_tokenizer, clip_tokenizer: TextTokenizer, context_length: int) -> None:  # type: ignore[no-untyped-def]
    """HTML entities, mojibake, digits, emoji, CJK, literal special tokens, and truncation that
    puts the end-of-text id back in the last position."""
    texts = [*PROBE_TEXTS, *load_evalset().captions]
    got = clip_tokenizer(texts, context_length)
    assert got.dtype == np.int64 and np.array_equal(
        got, reference_tokenizer(texts, context_length=context_length).numpy()
    )
    assert got[texts.index("word " * 100)][-1] == 49407


def test_without_python_cleaning_tokenizers_alone_differs_on_entities_and_mojibake(
    reference_tokenizer, clip_tokenizer: TextTokenizer
) -> None:  # type: ignore[no-untyped-def]
    """Why the cleaning stays in Python: a tokenizer.json has no ftfy and no HTML entity table. The
    file alone (its normalizer lower-cases and folds whitespace), as another ecosystem reads it,
    differs on exactly these probes (docs/models.md)."""
    plain = TextTokenizer(clip_bpe_tokenizer(Path(open_clip.tokenizer.default_bpe())), "none", 77, 0)
    differ = [t for t in PROBE_TEXTS if not np.array_equal(plain([t]), reference_tokenizer([t]).numpy())]
    assert differ == [PROBE_TEXTS[2], PROBE_TEXTS[3]]


@pytest.mark.parametrize("kind", ["lower", "whitespace", "canonicalize"])
def test_cleaning_is_open_clips(kind: str) -> None:
    reference = open_clip.tokenizer.get_clean_fn(kind)
    for text in PROBE_TEXTS:
        assert clean_text(text, kind) == reference(text), text


def test_a_file_that_is_not_a_merges_file_is_refused(tmp_path: Path) -> None:
    import gzip

    bogus = tmp_path / "vocab.txt.gz"
    with gzip.open(bogus, "wt") as handle:
        handle.write("version\na b\n")
    with pytest.raises(ClipExportError, match="is not a CLIP BPE merges file"):
        clip_bpe_tokenizer(bogus)


def test_export_bundles_the_tokenizer(tiny_vit_dir: Path) -> None:
    record = read_manifest(tiny_vit_dir).section("tokenizer")["file"]
    assert record["path"] == TOKENIZER_NAME and sha256_file(tiny_vit_dir / TOKENIZER_NAME) == record["sha256"]


def test_release_ships_it_and_the_runtime_tokenizes_without_torch(tiny_vit_copy: Path, tmp_path: Path) -> None:
    assert verify(tiny_vit_copy).passed
    directory = release([tiny_vit_copy], tag="v1", out=tmp_path / "dist").directory
    assert "tiny-vit-tokenizer.json" in (directory / "SHA256SUMS").read_text()
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


def test_runtime_refuses_a_tampered_tokenizer(tiny_vit_copy: Path) -> None:
    flip_byte(tiny_vit_copy / TOKENIZER_NAME)
    with pytest.raises(
        IntegrityError, match="refusing to load the tokenizer: tokenizer.json does not match its sha256"
    ):
        ClipOnnx.from_release(tiny_vit_copy)


def test_an_export_without_a_tokenizer_file_falls_back_to_open_clip(tiny_vit_copy: Path) -> None:
    """Artifacts exported before the tokenizer was bundled still serve captions, through open_clip."""
    manifest = read_manifest(tiny_vit_copy)
    del manifest.section("tokenizer")["file"]
    write_manifest(tiny_vit_copy, manifest)
    (tiny_vit_copy / TOKENIZER_NAME).unlink()
    runtime = ClipOnnx.from_release(tiny_vit_copy)
    expected = open_clip.get_tokenizer("ViT-B-32")(["a cat"]).numpy()
    assert np.array_equal(runtime.tokenize(["a cat"]), expected)
