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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import Manifest
from clip_export.core.errors import ClipExportError
from clip_export.core.manifest import read_manifest
from clip_export.core.metrics import l2_normalize
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import INT8_FAMILIES, int8_family_of

SCRIPT = Path(__file__).resolve().parents[2] / "js" / "transformers_embed.mjs"
TRANSFORMERS_JS = "@huggingface/transformers"
CLIENT_CHECK_MODES = ("auto", "require", "off")
# A caption longer than the context (transformers.js truncates it after adding the end-of-text id).
LONG_CAPTION = " ".join(["a long caption about a grey cat sleeping on a red sofa next to a window"] * 8)
# What the model card reports against. Text: the same graph on the same ids. Images through
# AutoProcessor go through sharp's affine bicubic (no antialiasing, corner-aligned, black beyond the
# edge), not PIL's: most reach the target, textures and upscales miss it; through the preprocessing
# graph (open_clip's resize inside) every image reaches it (docs/clients.md has the per-image figures).
TEXT_MIN_COSINE = 0.99999
IMAGE_TARGET_COSINE = 0.999
# Each variant in hf/onnx/ loaded by transformers.js's `dtype`, fed the same ids or pixel_values as
# ClipOnnx running the same precision: the same file on the same inputs, so only the onnxruntime build
# differs (onnxruntime-node under transformers.js, Python's here); measured ≥ 0.99999990 on every
# variant. A wrong file shows in the cosine where the variants differ enough (q4 against fp32: 0.997
# on the tiny model) and always in `nearest_precision`, the ClipOnnx precision closest (mean abs
# difference) to what transformers.js returned: fp16 and fp32 agree to cosine 0.9999998 on the tiny
# model but differ by 5.6e-5 mean abs, the same fp16 file under the two builds by 2.2e-5 at most.
VARIANT_MIN_COSINE = 0.99999
NODE_TIMEOUT_S = 300
STEP_MARKER = "clip-export-step"  # transformers_embed.mjs announces each model it runs with it


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
    modules = Path(configured) if configured else Path(__file__).resolve().parents[3] / "node_modules"
    package = modules / TRANSFORMERS_JS / "package.json"
    if not package.is_file():
        return f"{TRANSFORMERS_JS} is not installed in {modules} (run: ONNXRUNTIME_NODE_INSTALL_CUDA=skip npm ci, or set CLIP_EXPORT_NODE_MODULES)"
    return NodeSetup(node, modules, str(json.loads(package.read_text(encoding="utf-8"))["version"]))


def run_transformers_js(
    setup: NodeSetup,
    hf_dir: Path,
    request: dict[str, Any],
    pixel_values: np.ndarray | None = None,
    progress: Progress = silent,
) -> dict[str, Any]:
    """transformers.js's input_ids and L2-normalised embeddings for `request` (transformers_embed.mjs
    documents its keys); `pixel_values` [N, 3, H, W] go to the file the script reads for pixel_dtypes."""
    request = {**request, "images": [str(Path(p).resolve()) for p in request.get("images", [])]}
    with tempfile.TemporaryDirectory(prefix="clip-export-js-") as tmp:
        if pixel_values is not None:
            pixels = np.ascontiguousarray(pixel_values, dtype="<f4")
            pixels.tofile(Path(tmp) / "pixel_values.f32")
            request["pixel_values"] = {"file": str(Path(tmp) / "pixel_values.f32"), "dims": list(pixels.shape)}
        request_path = Path(tmp) / "request.json"
        request_path.write_text(json.dumps(request), encoding="utf-8")
        stdout_path = Path(tmp) / "out.json"
        messages: list[str] = []
        with (
            stdout_path.open("w", encoding="utf-8") as stdout,
            subprocess.Popen(
                [setup.node, str(SCRIPT), str(setup.node_modules), str(Path(hf_dir).resolve()), str(request_path)],
                stdout=stdout,
                stderr=subprocess.PIPE,
                text=True,
            ) as process,
        ):
            reader = threading.Thread(target=_read_steps, args=(process.stderr, messages, progress), daemon=True)
            reader.start()
            try:
                returncode = process.wait(timeout=NODE_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise ClipExportError(f"transformers.js did not finish within {NODE_TIMEOUT_S} s on {hf_dir}") from exc
            finally:  # never leave Node running: timeout, Ctrl-C or any other exception
                if process.poll() is None:
                    process.kill()
                    process.wait()
                reader.join(timeout=5)
        if returncode != 0:
            raise ClipExportError(f"transformers.js could not load {hf_dir}: {_node_error(messages, returncode)}")
        try:
            out = json.loads(stdout_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ClipExportError(f"transformers.js wrote no readable result for {hf_dir}: {exc}") from exc
    for key in ("text_embeds", "image_embeds"):
        if key in out:
            out[key] = l2_normalize(np.asarray(out[key]))
    for key in ("text_variants", "pixel_variants", "preprocessing_variants"):
        out[key] = {dtype: l2_normalize(np.asarray(rows)) for dtype, rows in out.get(key, {}).items()}
    return out


def _node_error(messages: list[str], returncode: int) -> str:
    """Node's own error line: its last line is only its version, and the stack follows the error."""
    lines = [line.strip() for line in messages if line.strip()]
    error = next(
        (
            line
            for line in lines
            if line.startswith(("Error", "TypeError", "RangeError", "SyntaxError")) or "Error:" in line.split(" ", 1)[0]
        ),
        None,
    )
    if error is not None:
        return error
    useful = [line for line in lines if not line.startswith(("Node.js v", "at "))]
    return useful[-1] if useful else f"exit {returncode}"


def _read_steps(stream: Any, messages: list[str], progress: Progress) -> None:
    """The script's "clip-export-step K N LABEL" lines become progress with an estimate of the time
    left (steps load a model each, so they take alike); anything else is kept for the error message."""
    start = time.perf_counter()
    for line in stream:
        parts = line.rstrip("\n").split(" ", 3)
        if len(parts) == 4 and parts[0] == STEP_MARKER and parts[1].isdigit() and parts[2].isdigit():
            done, total = int(parts[1]) - 1, int(parts[2])
            elapsed = time.perf_counter() - start
            left = f", ~{elapsed / done * (total - done):.0f} s left" if done else ""
            try:
                progress(f"transformers.js [{done + 1}/{total}{left}] {parts[3]}")
            except Exception:  # a failing display must not stop draining Node's stderr
                pass
        else:
            messages.append(line)


def _image_figures(cosines: np.ndarray, paths: list[Path]) -> dict[str, Any]:
    return {
        "images": {Path(p).name: float(c) for p, c in zip(paths, cosines)},
        "image_min_cosine": float(cosines.min()),
        "image_median_cosine": float(np.median(cosines)),
        "images_at_target": int(np.sum(cosines >= IMAGE_TARGET_COSINE)),
    }


def client_check(release_dir: Path, mode: str = "auto", progress: Progress = silent) -> dict[str, Any]:
    """The transformers.js record of a release (its hf/ beside its manifest): cosines against ClipOnnx
    on the bundled captions, a caption longer than the context and the bundled images (through
    AutoProcessor, and through the preprocessing graph where the release has one), and every variant
    in hf/onnx/ loaded by its dtype against ClipOnnx running the same precision; or why not."""
    if mode not in CLIENT_CHECK_MODES:
        raise ClipExportError(f"client check mode {mode!r}: use one of {', '.join(CLIENT_CHECK_MODES)}")
    if mode == "off":
        return {"status": "skipped", "reason": "not requested (--client-check off)"}
    release_dir = Path(release_dir)
    manifest = read_manifest(release_dir)
    layout = manifest.section("hf_layout") or {}
    missing = [name for name in ("vision_model.onnx", "text_model.onnx") if name not in layout.get("onnx", {})]
    if missing or not manifest.section_file("tokenizer.file", str(release_dir)):
        return {
            "status": "skipped",
            "reason": f"hf/ lacks {', '.join(missing) or 'tokenizer.json'}: the check needs both fp32 towers and "
            "the tokenizer",
        }
    setup = find_transformers_js()
    if isinstance(setup, str):
        if mode == "require":
            raise ClipExportError(f"--client-check require: {setup}")
        return {"status": "skipped", "reason": setup}
    from clip_export.core.environment import current_environment
    from clip_export.core.evalset import load_evalset
    from clip_export.runtime.serving import ClipOnnx
    from clip_export.stages.release.hf_layout import HF_DIR

    evalset = load_evalset()
    captions, images = [*evalset.captions, LONG_CAPTION], list(evalset.image_paths)
    runtime = ClipOnnx.from_release(release_dir)
    pixels = runtime.pixel_values(images)
    plan = variant_plan(manifest)
    request = {
        "captions": captions,
        "images": images,
        "dtype": "fp32",
        **{f"{kind}_dtypes": sorted(files) for kind, files in plan.items()},
    }
    got = run_transformers_js(setup, release_dir / HF_DIR, request, pixel_values=pixels, progress=progress)
    ours = _our_embeddings(release_dir, runtime, captions, pixels)
    text = np.sum(got["text_embeds"] * ours("text", "fp32"), axis=1)
    image = np.sum(got["image_embeds"] * ours("visual", "fp32"), axis=1)
    ids = runtime.tokenize(captions)
    record: dict[str, Any] = {
        "status": "measured",
        "client": f"transformers.js {setup.version} (Node, {TRANSFORMERS_JS}), dtype fp32",
        "environment": current_environment("cpu").describe(),
        "captions": len(evalset.captions),
        "text_min_cosine": float(text[:-1].min()),
        "long_caption_cosine": float(text[-1]),
        **_image_figures(image, images),
        "seconds": got.get("seconds", {}),
    }
    # Equal ids but for the last position of captions cut at the context, where transformers.js leaves
    # a word and the text graph puts the end-of-text id back.
    js_ids, cut = np.asarray(got["input_ids"]), ids[:, -1] != runtime.manifest.tokenizer.pad_token_id
    record["ids_equal_but_cut_eot"] = bool(
        np.array_equal(js_ids[:, :-1], ids[:, :-1]) and np.array_equal(js_ids[~cut, -1], ids[~cut, -1])
    )
    record["captions_cut"] = int(cut.sum())
    record.update(variant_records(plan, got, images, ours))
    return record


def _our_embeddings(
    release_dir: Path, fp32: Any, captions: list[str], pixels: np.ndarray
) -> Callable[[str, str], np.ndarray]:
    """ClipOnnx's embeddings per (tower, precision), each computed once: the bundled captions, or the
    images' pixel_values (what embed_images computes, and what a pixel_values or preprocessing-graph
    file is compared with), from one ClipOnnx per precision, the fp32 one already open."""
    from clip_export.runtime.serving import ClipOnnx

    opened: dict[str, Any] = {"fp32": fp32}
    done: dict[tuple[str, str], np.ndarray] = {}

    def ours(tower: str, variant: str) -> np.ndarray:
        """`variant`: a precision, or "int8/<kernel family>", served by ClipOnnx with the CPU flags that
        pick that family's file (so each hf/onnx file is compared with ClipOnnx running the same file)."""
        if (tower, variant) not in done:
            if variant not in opened:
                precision, _, family = variant.partition("/")
                if family:  # flags that pick this family's file; a tower without one gets the other family's
                    # file, never asked for, so its serve-time check (which would refuse it) is off here
                    flags = INT8_FAMILIES[family].requires_any_flag
                    opened[variant] = ClipOnnx.from_release(
                        release_dir, precision=precision, cpu_flags=flags, check="off"
                    )
                else:
                    opened[variant] = ClipOnnx.from_release(release_dir, precision=precision)
            done[tower, variant] = (
                opened[variant].embed_texts(captions) if tower == "text" else opened[variant].embed_pixels(pixels)
            )
        return done[tower, variant]

    return ours


def variant_plan(manifest: Manifest) -> dict[str, dict[str, tuple[str, str]]]:
    """What to ask transformers.js for, per kind of input (text: the ids, pixel: pixel_values,
    preprocessing: image_uint8): {dtype: (hf/onnx file, the manifest precision of its source)}."""
    from clip_export.stages.release.hf_layout import MODEL_FILE, PREPROCESSING_MODEL_FILE, transformers_js_load

    precision = {  # an INT8 file by its kernel family too: two files per tower share the precision
        a.path: a.precision + (f"/{family.name}" if (family := int8_family_of(a)) else "") for a in manifest.artifacts
    }
    kinds = {MODEL_FILE["text"]: "text", MODEL_FILE["visual"]: "pixel", PREPROCESSING_MODEL_FILE: "preprocessing"}
    plan: dict[str, dict[str, tuple[str, str]]] = {kind: {} for kind in kinds.values()}
    for name, source in manifest.section("hf_layout")["onnx"].items():
        base, dtype = transformers_js_load(name)
        plan[kinds[base]][dtype] = (name, precision[source])
    return plan


def variant_records(
    plan: dict[str, dict[str, tuple[str, str]]],
    got: dict[str, Any],
    images: list[Path],
    ours: Callable[[str, str], np.ndarray],
) -> dict[str, Any]:
    """`preprocessing_graph` (the fp32 graph per image, or why there is none) and `variants`: one row
    per hf/onnx/ file transformers.js loaded by its dtype, against ClipOnnx at the same precision."""
    from clip_export.stages.release.hf_layout import ONNX_DIR, PREPROCESSING_MODEL_FILE

    tower = {"text": "text", "pixel": "visual", "preprocessing": "visual"}
    mine = {
        kind: {precision: ours(tower[kind], precision) for _, precision in files.values()}
        for kind, files in plan.items()
    }
    inputs = {"text": "input_ids", "pixel": "pixel_values", "preprocessing": "image_uint8"}
    rows = []
    for kind, files in plan.items():
        for dtype, (name, precision) in sorted(files.items()):
            theirs = got[f"{kind}_variants"][dtype]
            cosine = np.sum(theirs * mine[kind][precision], axis=1)
            row: dict[str, Any] = {
                "file": f"{ONNX_DIR}/{name}",
                "dtype": dtype,
                "precision": precision.partition("/")[0],
                "input": inputs[kind],
                "items": len(cosine),
                "min_cosine": float(cosine.min()),
                "max_abs_diff": float(np.abs(theirs - mine[kind][precision]).max()),
            }
            if kind == "preprocessing":  # open_clip's resize in ONNX ops against PIL's: the image target applies
                row.update(
                    limit=IMAGE_TARGET_COSINE,
                    median_cosine=float(np.median(cosine)),
                    at_target=int(np.sum(cosine >= IMAGE_TARGET_COSINE)),
                )
            else:  # the same file on the same inputs: its own precision (and INT8 family) must be the nearest
                nearest = min(mine[kind], key=lambda p: float(np.abs(theirs - mine[kind][p]).mean()))
                row.update(
                    limit=VARIANT_MIN_COSINE, nearest_precision=nearest.partition("/")[0], nearest_variant=nearest
                )
            row["within_limit"] = bool(
                row["min_cosine"] >= row["limit"] and row.get("nearest_variant", precision) == precision
            )
            rows.append(row)
    fp32 = plan["preprocessing"].get("fp32")
    if fp32 is None:
        graph: dict[str, Any] = {
            "status": "skipped",
            "reason": f"hf/{ONNX_DIR}/ has no {PREPROCESSING_MODEL_FILE}.onnx: the release has no fp32 preprocessing "
            "graph (clip-export preprocessing-graph before release)",
        }
    else:
        cosine = np.sum(got["preprocessing_variants"]["fp32"] * mine["preprocessing"][fp32[1]], axis=1)
        graph = {"status": "measured", "file": f"{ONNX_DIR}/{fp32[0]}", **_image_figures(cosine, images)}
    return {"preprocessing_graph": graph, "variants": rows}
