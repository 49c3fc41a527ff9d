"""How much faster onnxruntime's INT8 GEMMs are than its fp32 GEMMs at the towers' own shapes.

    python benchmarks/int8_gemm_bound.py [--models ViT-B/32,ViT-L/14] [--rounds 15] [--exports ROOT]

The INT8 issue asks for INT8 at 3x the fp32 artifact at batch 1. A tower is its weight GEMMs plus
what INT8 does not shrink (LayerNorm, Softmax, attention's two activation MatMuls, element-wise ops),
so the tower's ratio can only fall below that of its GEMMs alone. This builds, for each tower, a
graph of nothing but its weight GEMMs (per layer: QKV width x 3*width, out-projection width x width,
FFN width x 4*width and back; open_clip's configs give widths and depths; random weights), quantizes
it the way `clip-export int8` does (dynamic, per-channel, MatMulConstBOnly) for both kernel
families, and times the three files interleaved at the tower's batch-1 rows: the patches plus the
class token for images, the bundled captions' median token count (the cut text graph) and the whole
77-token context for text. 2 threads, sessions parked after each run as ClipOnnx serves. Prints Markdown with the CPU.

With --exports ROOT (holding ROOT/<model-slug>/ from `clip-export onnx MODEL --random-init --out ROOT`
and `clip-export int8`), the towers themselves are timed the same way right after their GEMMs, at
the same rows (a caption of that many tokens; random pixels), so the two ratios share one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def gemm_chain(width: int, layers: int, path: Path) -> None:
    """A graph of one tower's weight GEMMs in order, [rows, width] in and out."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights, x = [], [], "x"
    for layer in range(layers):
        qkv = f"l{layer}_qkv"
        for name, rows, cols, source in (
            (qkv, width, 3 * width, x),
            (f"l{layer}_out", width, width, None),
            (f"l{layer}_fc1", width, 4 * width, None),
            (f"l{layer}_fc2", 4 * width, width, None),
        ):
            if name.endswith("_out"):  # attention's output projection reads a width-wide slice of QKV
                nodes.append(
                    helper.make_node("Split", [f"{qkv}_y"], [f"{qkv}_q", f"{qkv}_k", f"{qkv}_v"], axis=1, num_outputs=3)
                )
                source = f"{qkv}_v"
            elif source is None:
                source = nodes[-1].output[0]
            weights.append(
                numpy_helper.from_array(
                    (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32), f"{name}_w"
                )
            )
            nodes.append(helper.make_node("MatMul", [source, f"{name}_w"], [f"{name}_y"], name=name))
        x = nodes[-1].output[0]
    graph = helper.make_graph(
        nodes,
        "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", width])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["rows", width])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def quantize(source: Path, target: Path, weight_type: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        weight_type=getattr(QuantType, weight_type),
        per_channel=True,
        extra_options={"MatMulConstBOnly": True},
    )


def parked_session(path: Path) -> Any:
    """A session as ClipOnnx serves it: 2 threads spinning within a run, parked as soon as it returns,
    so one file's workers never slow the next file's run."""
    from clip_export.core.sessions import SessionOptions, create_session

    return create_session(path, SessionOptions(intra_op_threads=2, stop_spinning_after_run=True))


def interleaved_ms(runs: dict[str, tuple[Any, dict[str, np.ndarray]]], rounds: int, calls: int = 5) -> dict[str, float]:
    """p50 ms per label, the labels taking turns `calls` runs at a time after one warm-up round."""
    times: dict[str, list[float]] = {label: [] for label in runs}
    for round_ in range(rounds + 1):
        for label, (session, feed) in runs.items():
            for _ in range(calls):
                started = time.perf_counter()
                session.run(None, feed)
                if round_:
                    times[label].append((time.perf_counter() - started) * 1e3)
    return {label: float(np.median(t)) for label, t in times.items()}


def tower_ms(model_dir: Path, tower: str, rows: int, rounds: int) -> dict[str, float] | None:
    """The fp32 tower against the INT8 file of each family, at batch 1 with `rows` tokens."""
    from clip_export.core.manifest import read_manifest
    from clip_export.core.spec import TOWERS, int8_family_of

    if not (model_dir / "manifest.json").exists():
        return None
    manifest = read_manifest(model_dir)
    files = {"fp32": manifest.select(tower=tower, precision="fp32", format="onnx")[:1]}
    for entry in manifest.select(tower=tower, precision="int8", format="onnx"):
        family = int8_family_of(entry)
        files["QInt8" if family and family.name == "vnni" else "QUInt8"] = [entry]
    if len(files) < 3 or not all(files.values()):
        return None
    sessions = {label: parked_session(model_dir / entries[0].path) for label, entries in files.items()}
    if tower == "visual":
        feed = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    else:
        feed = np.zeros((1, int(sessions["fp32"].get_inputs()[0].shape[1])), np.int64)
        feed[0, :rows] = [49406] + [320] * (rows - 2) + [49407]  # SOT, "a" repeated, EOT: rows tokens
    return interleaved_ms({label: (s, {TOWERS[tower].input_name: feed}) for label, s in sessions.items()}, rounds)


def median_caption_tokens() -> int:
    import open_clip

    captions = json.loads((REPO / "clip_export" / "evalset" / "captions.json").read_text())
    ids = open_clip.get_tokenizer("ViT-B-32")(captions).numpy()
    return int(np.median((ids != 0).sum(axis=1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--exports", type=Path, help="also time the towers exported under ROOT/<model-slug>/")
    args = parser.parse_args()
    import onnxruntime
    import open_clip

    sys.path.insert(0, str(REPO))
    from clip_export.core.environment import current_environment

    logging.getLogger().setLevel(logging.ERROR)
    env = current_environment("CPUExecutionProvider")
    caption_rows = median_caption_tokens()
    print("# onnxruntime's INT8 GEMMs against its fp32 GEMMs at the towers' batch-1 shapes\n")
    print(
        f"{time.strftime('%Y-%m-%d %H:%MZ', time.gmtime())}, {env.describe()}, flags {','.join(env.isa_flags)}, "
        f"onnxruntime {onnxruntime.__version__}, 2 threads, {args.rounds} rounds\n"
    )
    print(
        "| model | tower | rows (batch 1) | weight GEMMs | fp32 ms | QInt8 ms | QUInt8 ms | QInt8 × fp32 | QUInt8 × fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        config = open_clip.get_model_config(model.replace("/", "-"))
        vision, text = config["vision_cfg"], config["text_cfg"]
        patches = (vision["image_size"] // vision["patch_size"]) ** 2 + 1
        towers = (
            ("visual", vision["width"], vision["layers"], (patches,)),
            ("text", text["width"], text["layers"], (caption_rows, text["context_length"])),
        )
        for tower, width, layers, row_counts in towers:
            with tempfile.TemporaryDirectory(prefix="gemms-") as scratch:
                fp32 = Path(scratch) / "fp32.onnx"
                gemm_chain(width, layers, fp32)
                paths = {"fp32": fp32}
                for weight_type in ("QInt8", "QUInt8"):
                    paths[weight_type] = Path(scratch) / f"{weight_type}.onnx"
                    quantize(fp32, paths[weight_type], weight_type)
                for rows in row_counts:
                    x = np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)
                    ms = interleaved_ms(
                        {label: (parked_session(path), {"x": x}) for label, path in paths.items()}, args.rounds
                    )
                    print(
                        f"| {model} | {tower}: weight GEMMs only | {rows} | {4 * layers} | {ms['fp32']:.2f} | {ms['QInt8']:.2f} "
                        f"| {ms['QUInt8']:.2f} | {ms['fp32'] / ms['QInt8']:.2f} | {ms['fp32'] / ms['QUInt8']:.2f} |",
                        flush=True,
                    )
                    whole = (
                        tower_ms(args.exports / model.replace("/", "-"), tower, rows, args.rounds)
                        if args.exports
                        else None
                    )
                    if whole:
                        print(
                            f"| {model} | {tower}: the exported tower | {rows} | {4 * layers} | {whole['fp32']:.2f} "
                            f"| {whole['QInt8']:.2f} | {whole['QUInt8']:.2f} | {whole['fp32'] / whole['QInt8']:.2f} "
                            f"| {whole['fp32'] / whole['QUInt8']:.2f} |",
                            flush=True,
                        )


if __name__ == "__main__":
    main()
