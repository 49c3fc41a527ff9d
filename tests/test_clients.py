"""transformers.js in Node loads a release's hf/ and matches ClipOnnx (marker js: needs the npm
packages .ci/run installs; skipped with the reason without them)."""
from __future__ import annotations

from pathlib import Path

import pytest

from clip_export import export_onnx, resolve
from clip_export.clients import IMAGE_TARGET_COSINE, TEXT_MIN_COSINE, client_check, find_transformers_js
from clip_export.errors import ClipExportError
from clip_export.manifest import read_manifest
from clip_export.release import release
from clip_export.verify import verify

pytestmark = pytest.mark.js


@pytest.fixture(scope="module")
def released_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ViT at 224 px, the resolution the image figures are about (at 64 px every resampling
    difference is magnified), released with the transformers.js check required."""
    setup = find_transformers_js()
    if isinstance(setup, str):
        pytest.skip(setup)
    out = tmp_path_factory.mktemp("clients")
    model_dir = export_onnx(resolve("tiny-vit-224", random_init=True, seed=0), out=out / "artifacts").model_dir
    assert verify(model_dir).passed
    return release([model_dir], tag="v1", out=out / "dist", client_check="require").directory


def test_transformers_js_matches_the_runtime(released_224: Path) -> None:
    record = read_manifest(released_224)["clients"]["transformers.js"]
    assert record["status"] == "measured" and record["client"].startswith("transformers.js 4.3.2")
    assert record["ids_equal_but_cut_eot"] and record["captions_cut"] == 2  # the bundled long caption and ours
    assert record["text_min_cosine"] >= TEXT_MIN_COSINE
    assert record["long_caption_cosine"] >= TEXT_MIN_COSINE  # 0.199 before the text graph restored EOT
    # sharp's bicubic is not PIL's: most images reach the 0.999, textures and upscales miss it (docs/clients.md).
    assert record["image_median_cosine"] >= IMAGE_TARGET_COSINE and record["image_min_cosine"] >= 0.998
    assert record["images_at_target"] >= 0.8 * len(record["images"])
    card = (released_224 / "MODEL_CARD.md").read_text()
    assert f"| a caption longer than the context | 1 | {record['long_caption_cosine']:.7f} |" in card


def test_require_without_node_modules_fails_with_the_reason(released_224: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CLIP_EXPORT_NODE_MODULES", str(tmp_path / "missing"))
    assert client_check(released_224, "auto")["reason"].startswith("@huggingface/transformers is not installed in")
    with pytest.raises(ClipExportError, match="--client-check require: @huggingface/transformers is not installed"):
        client_check(released_224, "require")
