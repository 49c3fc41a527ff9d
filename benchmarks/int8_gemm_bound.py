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


def quantized(source: Path, target: Path, family: Any) -> Path:
    """The GEMM chain quantized by the call every INT8 file is made by (quantize8.quantize_weights), in
    one kernel family's scheme; nothing is left float (the chain has no final projection)."""
    import onnx

    from clip_export.stages.quantize8.int8_build import quantize_weights

    quantize_weights(onnx.load(str(source)), target, family.scheme, [])
    return target


def parked_session(path: Path) -> Any:
    """A session as ClipOnnx serves it: 2 threads spinning within a run, parked as soon as it returns,
    so one file's workers never slow the next file's run."""
    from clip_export.core.sessions import SessionOptions, create_session

    return create_session(path, SessionOptions(intra_op_threads=2, stop_spinning_after_run=True))


def interleaved_ms(runs: dict[str, tuple[Any, dict[str, np.ndarray]]], rounds: int) -> dict[str, float]:
    """p50 ms per label, five runs a round each, interleaved (the project's time_interleaved)."""
    from clip_export.stages.bench.timing import time_interleaved

    calls = [lambda session=session, feed=feed: session.run(None, feed) for session, feed in runs.values()]
    return dict(zip(runs, time_interleaved(calls, rounds=5 * rounds, warmup=5)))


def tower_files(model_dir: Path, tower: str) -> dict[str, Path] | None:
    """The fp32 file and the plain INT8 file of each kernel family (by weight type) of an export, or
    None when the export or one of the three is missing."""
    from clip_export.core.manifest import read_manifest
    from clip_export.core.spec import int8_family_of

    if not (model_dir / "manifest.json").exists():
        return None
    manifest = read_manifest(model_dir)
    files = {"fp32": manifest.select(tower=tower, precision="fp32", format="onnx")[:1]}
    for entry in manifest.select(tower=tower, precision="int8", format="onnx"):
        family = int8_family_of(entry)
        if (entry.detail("conversion") or {}).get("mode") == "blockwise":
            return None  # a fallback file: these scripts compare the plain families (int8_profile --blockwise)
        if family is not None:
            files[family.scheme.weight_type] = [entry]
    if len(files) < 3 or not all(files.values()):
        return None
    return {label: model_dir / entries[0].path for label, entries in files.items()}


def tower_feed(model_dir: Path, tower: str, rows: int) -> dict[str, np.ndarray]:
    """A batch-1 input with `rows` rows: random pixels, or a caption of `rows` tokens (start, one
    ordinary id repeated (CLIP's BPE: below the specials), end)."""
    from clip_export.core.manifest import read_manifest
    from clip_export.core.spec import TOWERS

    manifest = read_manifest(model_dir)
    if tower == "visual":
        feed = np.random.default_rng(1).standard_normal((1, 3, *manifest.preprocess.image_size)).astype(np.float32)
    else:
        settings = manifest.tokenizer
        feed = np.full((1, settings.context_length), settings.pad_token_id, np.int64)
        feed[0, :rows] = [settings.sot_token_id] + [settings.sot_token_id - 1] * (rows - 2) + [settings.eot_token_id]
    return {TOWERS[tower].input_name: feed}


def tower_ms(model_dir: Path, tower: str, rows: int, rounds: int) -> dict[str, float] | None:
    """The fp32 tower against the INT8 file of each family, at batch 1 with `rows` rows."""
    files = tower_files(model_dir, tower)
    if files is None:
        return None
    feed = tower_feed(model_dir, tower, rows)
    return interleaved_ms({label: (parked_session(path), feed) for label, path in files.items()}, rounds)


def image_rows(vision: dict[str, Any]) -> int:
    """An image's rows in the visual tower at batch 1: its patches and the class token."""
    return int((vision["image_size"] // vision["patch_size"]) ** 2 + 1)


def median_caption_tokens() -> int:
    import open_clip

    from clip_export.core.evalset import load_evalset

    ids = open_clip.get_tokenizer("ViT-B-32")(list(load_evalset().captions)).numpy()
    return int(np.median((ids != 0).sum(axis=1)))


def print_header(title: str, settings: str) -> None:
    """The title, then when and where it ran: the CPU and its flags beside every figure."""
    from clip_export.core.environment import current_environment

    logging.getLogger().setLevel(logging.ERROR)
    env = current_environment("CPUExecutionProvider")
    print(f"# {title}\n")
    print(
        f"{time.strftime('%Y-%m-%d %H:%MZ', time.gmtime())}, {env.describe()}, flags {','.join(env.isa_flags)}, "
        f"{settings}\n"
    )


def table_row(model: str, what: str, rows: int, layers: int, ms: dict[str, float]) -> str:
    return (
        f"| {model} | {what} | {rows} | {4 * layers} | {ms['fp32']:.2f} | {ms['QInt8']:.2f} | {ms['QUInt8']:.2f} "
        f"| {ms['fp32'] / ms['QInt8']:.2f} | {ms['fp32'] / ms['QUInt8']:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--exports", type=Path, help="also time the towers exported under ROOT/<model-slug>/")
    args = parser.parse_args()
    import open_clip

    sys.path.insert(0, str(REPO))
    from clip_export.core.spec import INT8_FAMILIES

    caption_rows = median_caption_tokens()
    print_header(
        "onnxruntime's INT8 GEMMs against its fp32 GEMMs at the towers' batch-1 shapes",
        f"2 threads, {args.rounds} rounds",
    )
    print(
        "| model | tower | rows (batch 1) | weight GEMMs | fp32 ms | QInt8 ms | QUInt8 ms | QInt8 × fp32 | QUInt8 × fp32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        config = open_clip.get_model_config(model.replace("/", "-"))
        vision, text = config["vision_cfg"], config["text_cfg"]
        patches = image_rows(vision)
        towers = (
            ("visual", vision["width"], vision["layers"], (patches,)),
            ("text", text["width"], text["layers"], (caption_rows, text["context_length"])),
        )
        for tower, width, layers, row_counts in towers:
            with tempfile.TemporaryDirectory(prefix="gemms-") as scratch:
                fp32 = Path(scratch) / "fp32.onnx"
                gemm_chain(width, layers, fp32)
                paths = {"fp32": fp32}
                for family in INT8_FAMILIES.values():
                    label = family.scheme.weight_type
                    paths[label] = quantized(fp32, Path(scratch) / f"{label}.onnx", family)
                for rows in row_counts:
                    x = np.random.default_rng(1).standard_normal((rows, width)).astype(np.float32)
                    ms = interleaved_ms(
                        {label: (parked_session(path), {"x": x}) for label, path in paths.items()}, args.rounds
                    )
                    print(table_row(model, f"{tower}: weight GEMMs only", rows, layers, ms), flush=True)
                    whole = (
                        tower_ms(args.exports / model.replace("/", "-"), tower, rows, args.rounds)
                        if args.exports
                        else None
                    )
                    if whole:
                        print(table_row(model, f"{tower}: the exported tower", rows, layers, whole), flush=True)


if __name__ == "__main__":
    main()
