"""Hugging Face optimum (optimum-onnx's ORT classes, transformers 4.57) loads a release's hf/ and
matches ClipOnnx (marker clients: needs the isolated install .ci/run puts in .clients/optimum, since
optimum-onnx 0.1 requires transformers<4.58 and our venv has 5; skipped with the reason without it).
tests/optimum_embed.py runs in a subprocess with that install first on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_export import export_onnx, resolve
from clip_export.core.evalset import load_evalset
from clip_export.core.metrics import l2_normalize
from clip_export.runtime import ClipOnnx
from clip_export.stages.release.clients import IMAGE_TARGET_COSINE, TEXT_MIN_COSINE
from clip_export.stages.release.hf_layout import HF_DIR, MODEL_FILE, ONNX_DIR
from clip_export.stages.release.release import release
from clip_export.stages.verify import verify

pytestmark = pytest.mark.clients

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().parent / "optimum_embed.py"
# The images whose pixels CLIPImageProcessor computes differently (docs/clients.md): a centre crop one
# column to the left where the resized width minus the crop is odd (HF floors, torchvision rounds),
# and for the RGBA one also RGB conversion before the resize (open_clip converts after).
CROP_OFFSET_IMAGES = {"coins.jpg", "rocket-small.jpg", "text-sign.jpg"}
RGBA_IMAGE = "coffee-and-cat-wide-alpha.png"


def optimum_dir() -> Path | str:
    """The isolated install, or why it is not usable."""
    configured = os.environ.get("CLIP_EXPORT_OPTIMUM_DIR")
    target = Path(configured) if configured else ROOT / ".clients" / "optimum"
    if not any(target.glob("optimum_onnx-*.dist-info")):
        return f"optimum-onnx is not installed in {target} (.ci/run installs it; or set CLIP_EXPORT_OPTIMUM_DIR)"
    return target


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny ViT at 224 px, released, embedded by optimum and by ClipOnnx."""
    install = optimum_dir()
    if isinstance(install, str):
        pytest.skip(install)
    out = tmp_path_factory.mktemp("optimum")
    model_dir = export_onnx(resolve("tiny-vit-224", random_init=True, seed=0), out=out / "artifacts").model_dir
    assert verify(model_dir).passed
    released = release([model_dir], tag="v1", out=out / "dist", client_check="off").directory
    evalset = load_evalset()
    captions = out / "captions.json"
    captions.write_text(json.dumps(list(evalset.captions)), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(install), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            str(released / HF_DIR),
            *(f"{ONNX_DIR}/{MODEL_FILE[t]}.onnx" for t in ("text", "visual")),
            str(captions),
            str(out / "optimum.npz"),
            *map(str, evalset.image_paths),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    got = np.load(out / "optimum.npz")
    runtime = ClipOnnx.from_release(released)
    return {
        "got": got,
        "runtime": runtime,
        "evalset": evalset,
        "probes": json.loads(str(got["probes"])),
        "versions": json.loads(str(got["versions"])),
        "text_cosine": (l2_normalize(got["text_embeds"]) * runtime.embed_texts(list(evalset.captions))).sum(axis=1),
        "image_cosine": (l2_normalize(got["image_embeds"]) * runtime.embed_images(list(evalset.image_paths))).sum(
            axis=1
        ),
    }


def test_optimum_loads_the_layout_with_clip_classes(measured: dict) -> None:
    assert measured["versions"]["optimum-onnx"] == "0.1.0" and measured["versions"]["transformers"].startswith("4.57.")
    assert {k: measured["probes"][k] for k in ("config", "processor", "tokenizer", "image_processor")} == {
        "config": "CLIPConfig",
        "processor": "CLIPProcessor",
        "tokenizer": "CLIPTokenizerFast",
        "image_processor": "CLIPImageProcessor",
    }


def test_optimum_text_embeddings_match_the_runtime(measured: dict) -> None:
    runtime, captions = measured["runtime"], list(measured["evalset"].captions)
    # CLIPTokenizerFast truncates before adding EOT: the bundled caption longer than the context gets our ids too.
    assert measured["got"]["untruncated_lengths"].max() > runtime.tokenize(captions).shape[1]
    np.testing.assert_array_equal(measured["got"]["input_ids"], runtime.tokenize(captions))
    assert measured["text_cosine"].min() >= TEXT_MIN_COSINE


def test_optimum_image_embeddings_match_the_runtime_and_the_differences_are_the_crop(measured: dict) -> None:
    names = measured["evalset"].image_names
    ours = measured["runtime"].pixel_values(list(measured["evalset"].image_paths))
    theirs = measured["got"]["pixel_values"]
    differ = {n for n, a, b in zip(names, theirs, ours) if np.abs(a - b).max() > 1e-5}
    assert differ == CROP_OFFSET_IMAGES | {RGBA_IMAGE}
    for name in CROP_OFFSET_IMAGES:  # the same pixels one column over
        i = names.index(name)
        np.testing.assert_allclose(theirs[i][:, :, 1:], ours[i][:, :, :-1], atol=1e-5)
    cosine = dict(zip(names, measured["image_cosine"]))
    assert min(c for n, c in cosine.items() if n not in differ) >= TEXT_MIN_COSINE  # same pixels, same graph
    assert min(cosine.values()) >= IMAGE_TARGET_COSINE


def test_optimum_classes_that_need_another_layout_say_what_they_miss(measured: dict) -> None:
    """What the CLIP-specific classes expect and hf/ does not give (docs/clients.md): one model.onnx
    with logits, or a last_hidden_state. If optimum learns the separate towers, this fails: update the docs."""
    probes = measured["probes"]
    assert probes["ORTModelForFeatureExtraction(text_model.onnx)"] == "KeyError: 'last_hidden_state'"
    assert probes["ORTModelForZeroShotImageClassification(text_model.onnx)"] == "KeyError: 'logits_per_text'"
    assert probes["zero_shot_default_file"] == "vision_model.onnx"  # no model.onnx: it picks a tower, with a warning
