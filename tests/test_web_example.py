"""examples/web: the search page runs a release in headless Chromium with onnxruntime-web, and ranks
the images as Python does on the same artifacts (marker js; skipped without node_modules or chromium)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import numpy as np
import onnxruntime as ort
import pytest

from clip_export import export_onnx, resolve
from clip_export.core.evalset import BUNDLED_DIR
from clip_export.core.preprocess_graph import rgb_uint8
from clip_export.runtime import ClipOnnx
from clip_export.stages.preprocess_stage import add_preprocessing
from clip_export.stages.release.hf_layout import HF_DIR, ONNX_DIR
from clip_export.stages.release.release import release
from clip_export.stages.verify import verify

pytestmark = pytest.mark.js
ROOT = Path(__file__).resolve().parent.parent
NODE_MODULES = ROOT / "node_modules"
IMAGES = ("cat-chelsea.jpg", "coffee.jpg", "astronaut.jpg", "rocket-small.jpg", "moon.jpg", "brick.jpg")
CAPTION = "a photo of a cat"
SCREENSHOT = ROOT / "docs" / "img" / "web-search.png"


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


def _needs() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    for package in ("onnxruntime-web", "@huggingface/tokenizers", "playwright-core"):
        if not (NODE_MODULES / package / "package.json").is_file():
            return f"{package} is not installed in {NODE_MODULES} (run: ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci)"
    if shutil.which("chromium") is None:
        return "chromium is not installed (apt-get install chromium; .ci/run does)"
    return None


def test_web_page_ranks_images_like_python(tmp_path: Path) -> None:
    reason = _needs()
    if reason:
        pytest.skip(reason)
    model_dir = export_onnx(resolve("tiny-vit-224", random_init=True, seed=0), out=tmp_path / "artifacts").model_dir
    add_preprocessing(model_dir, precisions=["fp32"])
    assert verify(model_dir).passed
    released = release([model_dir], tag="v1", out=tmp_path / "dist", client_check="off").directory
    site = tmp_path / "site"
    site.mkdir()
    for name, target in (
        ("examples", ROOT / "examples"),
        ("node_modules", NODE_MODULES),
        ("release", released),
        ("images", BUNDLED_DIR / "images"),
    ):
        (site / name).symlink_to(target)

    hf = released / HF_DIR / ONNX_DIR
    vision = ort.InferenceSession(str(hf / "vision_model_preprocessing.onnx"))
    images = np.concatenate(
        [vision.run(None, {"image_uint8": rgb_uint8(BUNDLED_DIR / "images" / name)})[0] for name in IMAGES]
    )
    ids = ClipOnnx.from_release(released).tokenize([CAPTION])
    query = ort.InferenceSession(str(hf / "text_model.onnx")).run(None, {"input_ids": ids})[0][0]
    scores = (images / np.linalg.norm(images, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    expected = [IMAGES[i] for i in np.argsort(-scores, kind="stable")]

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = (
            f"http://127.0.0.1:{server.server_port}/examples/web/index.html?release=/release/{HF_DIR}&caption={quote(CAPTION)}&images="
            + ",".join(f"/images/{n}" for n in IMAGES)
        )
        shot = tmp_path / "web-search.png"
        done = subprocess.run(
            [
                "node",
                str(ROOT / "tests" / "js" / "drive_web.mjs"),
                url,
                str(shot),
                shutil.which("chromium") or "chromium",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            cwd=ROOT,
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
    assert done.returncode == 0, done.stderr.strip().splitlines()[-1:] or done.returncode
    page = json.loads(done.stdout)
    assert [r["url"].rsplit("/", 1)[-1] for r in page["ranking"]] == expected
    got = {r["url"].rsplit("/", 1)[-1]: r["score"] for r in page["ranking"]}
    assert max(abs(got[name] - float(s)) for name, s in zip(IMAGES, scores)) < 1e-4
    assert shot.stat().st_size > 10_000
    if os.environ.get("CLIP_EXPORT_DOCS_SCREENSHOT") == "1":  # refresh the picture docs/clients.md shows
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
