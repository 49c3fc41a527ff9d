"""SmoothQuant-style smoothing before INT8, on the trained MiniLM text tower of int8_trained.py.

    python benchmarks/int8_smoothing.py [--minilm DIR] [--alphas 0.5,0.75,0.85]

Random weights have no outlier channels; MiniLM's LayerNorm outputs reach 28 where their median
channel is about 1.6, and onnxruntime's dynamic quantization gives each activation tensor one
scale. Smoothing divides each input channel k of a weight MatMul by s_k = max|x_k|^alpha /
max|W_k,:|^(1 - alpha) (an inserted Mul; BERT is post-LN, so it cannot fold into the LayerNorm,
whose output is also the residual) and multiplies row k of the weight by s_k, an exact identity
in float, before `clip-export int8`'s own quantization (QInt8 per-channel, dynamic). The ranges
max|x_k| come from one of two caption sets: the bundled evaluation captions the gate then scores
(optimistic: calibrated on the test set) or benchmarks/data/calibration-captions.txt, 60 captions
that share no line with it. Smoothed are either every weight MatMul's input or only the FFN
inputs (the MatMuls whose output is 4x wider than their input), and each result goes through the
unchanged int8 gate.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
REPO = ROOT.parent
CALIBRATION = ROOT / "data" / "calibration-captions.txt"


def channel_ranges(source: Path, inputs: list[str], captions: list[str], tokenizer: Path) -> dict[str, np.ndarray]:
    """max |x_k| per channel of each named tensor over the captions, one caption at a time, tokenized
    as served (core.outlier_split.channel_ranges, the measurement `int8`'s outlier split uses)."""
    import onnx

    from clip_export.core.manifest import read_manifest
    from clip_export.core.outlier_split import channel_ranges as measured
    from clip_export.core.tokenizer import TextTokenizer

    ids = TextTokenizer.from_file(tokenizer, read_manifest(source.parent).tokenizer)(captions)
    return measured(onnx.load(str(source)), inputs, "input_ids", ids, source.parent)


def smoothed(source: Path, target: Path, alpha: float, ffn_only: bool, captions: list[str], tokenizer: Path) -> int:
    """Write the smoothed fp32 graph; returns how many activation tensors were smoothed."""
    import onnx
    from onnx import helper, numpy_helper

    from clip_export.core.graph_surgery import int8_excluded_nodes

    model = onnx.load(str(source))
    weights = {i.name: i for i in model.graph.initializer}
    excluded = set(int8_excluded_nodes(model))
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in weights and node.name not in excluded:
            consumers.setdefault(node.input[0], []).append(node)
    if ffn_only:
        consumers = {
            x: nodes
            for x, nodes in consumers.items()
            if all((lambda d: d[1] == 4 * d[0])(list(weights[n.input[1]].dims)) for n in nodes)
        }
    ranges = channel_ranges(source, list(consumers), captions, tokenizer)
    for x, nodes in consumers.items():
        matrices = [numpy_helper.to_array(weights[n.input[1]]) for n in nodes]
        weight_range = np.max([np.abs(w).max(axis=1) for w in matrices], axis=0)
        scale = np.maximum(ranges[x], 1e-5) ** alpha / np.maximum(weight_range, 1e-5) ** (1 - alpha)
        scale = np.clip(scale, 1e-3, None).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(1.0 / scale, f"{x}_smoothing"))
        model.graph.node.insert(
            list(model.graph.node).index(nodes[0]),
            helper.make_node("Mul", [x, f"{x}_smoothing"], [f"{x}_smoothed"], name=f"{x}_smooth"),
        )
        for node, w in zip(nodes, matrices):
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(w * scale[:, None], node.input[1]))
            node.input[0] = f"{x}_smoothed"
    onnx.save(model, str(target))
    return len(consumers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path)
    parser.add_argument("--alphas", default="0.5,0.75,0.85")
    args = parser.parse_args()
    from int8_trained import WORK, build, gate, interleaved_p50_ms, minilm_dir, quantize

    from clip_export.core.environment import current_environment
    from clip_export.core.evalset import load_evalset

    logging.getLogger().setLevel(logging.ERROR)
    sys.path.insert(0, str(REPO / "tests"))
    import open_clip

    open_clip.add_model_config(REPO / "tests" / "configs")
    model_dir = build(minilm_dir(args.minilm), None, WORK / "layersall")
    env = current_environment("CPUExecutionProvider")
    print("# SmoothQuant-style smoothing before INT8: MiniLM-L6 text tower (trained)\n")
    print(f"{time.strftime('%Y-%m-%d %H:%MZ', time.gmtime())}, {env.describe()}, flags {','.join(env.isa_flags)}\n")
    sets = {
        "evaluation captions (optimistic)": list(load_evalset().captions),
        "disjoint captions": [line.strip() for line in CALIBRATION.read_text().splitlines() if line.strip()],
    }
    source = model_dir / "text.onnx"
    plain = model_dir / "text.smoothing-plain.onnx"
    quantize(source, plain, "QInt8", True, False, [])
    g = gate(model_dir, plain)
    print(
        "| smoothed inputs | alpha | calibrated on | tensors | gate | mean abs Δ (norm.) | min cosine | worst top-1 | text→text top-5 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| none (plain QInt8) | - | - | 0 | {g['status']} | {g['mean_abs']:.2e} | {g['min_cos']:.4f} | {g['top1']:.3f} | {g['top5']:.3f} |"
    )
    timed = {"fp32": source, "plain QInt8": plain}
    for ffn_only in (False, True):
        for alpha in (float(a) for a in args.alphas.split(",")):
            for label, captions in sets.items():
                smooth = model_dir / "text.smoothing-fp32.onnx"
                count = smoothed(source, smooth, alpha, ffn_only, captions, model_dir / "tokenizer.json")
                target = model_dir / f"text.smoothing-{'ffn' if ffn_only else 'all'}-{alpha}-{len(captions)}.onnx"
                quantize(smooth, target, "QInt8", True, False, [])
                g = gate(model_dir, target)
                print(
                    f"| {'FFN inputs' if ffn_only else 'every weight MatMul'} | {alpha} | {label} | {count} | {g['status']} "
                    f"| {g['mean_abs']:.2e} | {g['min_cos']:.4f} | {g['top1']:.3f} | {g['top5']:.3f} |",
                    flush=True,
                )
                if ffn_only and label.startswith("disjoint") and alpha == 0.75:
                    timed["smoothed QInt8 (FFN inputs, alpha 0.75, disjoint)"] = target
    with np.load(model_dir / "reference.npz") as data:
        ids = data["input_ids"]
    ms = interleaved_p50_ms(timed, ids)
    print("\n| batch-1 text tower | p50 ms | × fp32 ONNX |\n|---|---|---|")
    for label, value in ms.items():
        print(f"| {label} | {value:.2f} | {ms['fp32'] / value:.2f} |")


if __name__ == "__main__":
    main()
