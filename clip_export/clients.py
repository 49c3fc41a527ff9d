"""Clients that no one here wrote, loading a release: transformers.js in Node reads `hf/` (the
Hugging Face layout) and embeds the bundled captions and images; the cosines against `ClipOnnx`
on the same release are the figures the model card prints.

Node and `@huggingface/transformers` come from npm (`package.json` at the repository root,
installed by `.ci/run`); they are found through $CLIP_EXPORT_NODE_MODULES or the repository's
`node_modules`. Where they are missing, `client_check` returns a skipped record with the reason.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ClipExportError
from .manifest import read_manifest

SCRIPT = Path(__file__).parent / "js" / "transformers_embed.mjs"
TRANSFORMERS_JS = "@huggingface/transformers"
CLIENT_CHECK_MODES = ("auto", "require", "off")
# A caption longer than the context (transformers.js truncates it after adding the end-of-text id).
LONG_CAPTION = " ".join(["a long caption about a grey cat sleeping on a red sofa next to a window"] * 8)
# What the model card reports against; the text graph is the same graph on the same ids, images go
# through sharp's bicubic instead of PIL's (docs/clients.md has the per-image figures).
TEXT_MIN_COSINE = 0.99999
IMAGE_TARGET_COSINE = 0.999
NODE_TIMEOUT_S = 300


@dataclass(frozen=True)
class NodeSetup:
    node: str
    node_modules: Path
    version: str


def find_transformers_js() -> NodeSetup | str:
    """Node and transformers.js, or the reason they cannot be used here."""
    node = shutil.which("node")
    if node is None:
        return "node is not installed (Node 20+; .ci/run installs the npm packages)"
    configured = os.environ.get("CLIP_EXPORT_NODE_MODULES")
    modules = Path(configured) if configured else Path(__file__).resolve().parent.parent / "node_modules"
    package = modules / TRANSFORMERS_JS / "package.json"
    if not package.is_file():
        return f"{TRANSFORMERS_JS} is not installed in {modules} (run: ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci, or set CLIP_EXPORT_NODE_MODULES)"
    return NodeSetup(node, modules, str(json.loads(package.read_text(encoding="utf-8"))["version"]))


def run_transformers_js(setup: NodeSetup, hf_dir: Path, captions: list[str], images: list[Path], dtype: str = "fp32") -> dict[str, Any]:
    """transformers.js's input_ids and L2-normalised embeddings for `captions` and `images`."""
    with tempfile.TemporaryDirectory(prefix="clip-export-js-") as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"captions": captions, "images": [str(Path(p).resolve()) for p in images], "dtype": dtype}), encoding="utf-8")
        try:
            done = subprocess.run([setup.node, str(SCRIPT), str(setup.node_modules), str(Path(hf_dir).resolve()), str(request)], capture_output=True, text=True, timeout=NODE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ClipExportError(f"transformers.js did not finish within {NODE_TIMEOUT_S} s on {hf_dir}") from None
    if done.returncode != 0:
        last = next((line for line in reversed(done.stderr.strip().splitlines()) if line.strip()), f"exit {done.returncode}")
        raise ClipExportError(f"transformers.js could not load {hf_dir}: {last.strip()}")
    out = json.loads(done.stdout)
    for key in ("text_embeds", "image_embeds"):
        if key in out:
            rows = np.asarray(out[key], dtype=np.float64)
            out[key] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def client_check(release_dir: Path, mode: str = "auto") -> dict[str, Any]:
    """The transformers.js record of a release (its hf/ beside its manifest): cosines against ClipOnnx
    on the bundled captions, a caption longer than the context and the bundled images, or why not."""
    if mode not in CLIENT_CHECK_MODES:
        raise ClipExportError(f"client check mode {mode!r}: use one of {', '.join(CLIENT_CHECK_MODES)}")
    if mode == "off":
        return {"status": "skipped", "reason": "not requested (--client-check off)"}
    manifest = read_manifest(release_dir)
    layout = manifest.get("hf_layout") or {}
    missing = [name for name in ("vision_model.onnx", "text_model.onnx") if name not in layout.get("onnx", {})]
    if missing or not manifest["tokenizer"].get("file"):
        return {"status": "skipped", "reason": f"hf/ lacks {', '.join(missing) or 'tokenizer.json'}: the check needs both fp32 towers and the tokenizer"}
    setup = find_transformers_js()
    if isinstance(setup, str):
        if mode == "require":
            raise ClipExportError(f"--client-check require: {setup}")
        return {"status": "skipped", "reason": setup}
    from .environment import current_environment
    from .evalset import load_evalset
    from .hf_layout import HF_DIR
    from .runtime import ClipOnnx

    evalset = load_evalset()
    captions = [*evalset.captions, LONG_CAPTION]
    got = run_transformers_js(setup, release_dir / HF_DIR, captions, list(evalset.image_paths))
    runtime = ClipOnnx.from_release(release_dir)
    text = np.sum(got["text_embeds"] * runtime.embed_texts(captions), axis=1)
    image = np.sum(got["image_embeds"] * runtime.embed_images(list(evalset.image_paths)), axis=1)
    ids = runtime.tokenize(captions)
    record: dict[str, Any] = {
        "status": "measured",
        "client": f"transformers.js {setup.version} (Node, {TRANSFORMERS_JS}), dtype fp32",
        "environment": current_environment("cpu").describe(),
        "captions": len(evalset.captions),
        "text_min_cosine": float(text[:-1].min()),
        "long_caption_cosine": float(text[-1]),
        "images": {Path(p).name: float(c) for p, c in zip(evalset.image_paths, image)},
        "image_min_cosine": float(image.min()),
        "image_median_cosine": float(np.median(image)),
        "images_at_target": int(np.sum(image >= IMAGE_TARGET_COSINE)),
    }
    # Equal ids but for the last position of captions cut at the context, where transformers.js leaves
    # a word and the text graph puts the end-of-text id back.
    js_ids, cut = np.asarray(got["input_ids"]), ids[:, -1] != runtime.manifest["tokenizer"].get("pad_token_id", 0)
    record["ids_equal_but_cut_eot"] = bool(np.array_equal(js_ids[:, :-1], ids[:, :-1]) and np.array_equal(js_ids[~cut, -1], ids[~cut, -1]))
    record["captions_cut"] = int(cut.sum())
    return record
