"""What the batch-first attention export (clip_export.core.attention) buys, against torch's own trace.

    python benchmarks/batch_first_attention.py [--models ViT-B/32,ViT-L/14] [--runs 30]

Exports each model twice in this run (`export_onnx(batch_first_attention=False)` keeps
nn.MultiheadAttention as torch traces it; True, the default, traces it batch-first), quantizes
both to INT8 with `clip-export int8` (verify gate included), and times each pair at batch 1 on the CPU, alternating the two sessions call by call so
that drift hits both alike. Writes benchmarks/results/batch_first_attention.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from cpu_report import prepare  # this directory is on sys.path when a script here runs

from clip_export.core.manifest import now_iso
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.stages.bench.bench_rows import machine_info
from clip_export.stages.bench.timing import time_interleaved

WORK = Path(__file__).parent / ".work" / "attention"
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the exports under benchmarks/.work/attention")
    args = parser.parse_args()
    lines = [
        f"{now_iso()}, {machine_info(2)['cpu']}, 2 threads, spinning off, {args.runs} alternating runs each, batch 1, random weights",
        "",
        "| model | tower | precision | nodes, torch's trace → batch-first | torch's trace p50 ms | batch-first p50 ms | batch-first / torch's trace | max abs Δ |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rng = np.random.default_rng(0)
    for model in args.models.split(","):
        dirs = [
            prepare(model, WORK / variant, batch_first_attention=variant == "batch-first")
            for variant in ("torch-mha", "batch-first")
        ]
        for tower, name in (("visual", "pixel_values"), ("text", "input_ids")):
            if tower == "visual":
                feed = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
            else:
                feed = np.zeros((1, 77), np.int64)
                feed[0, :8] = [49406, 320, 1125, 539, 320, 2368, 518, 49407]
            for precision, suffix in (("fp32", ""), ("int8", ".int8")):
                paths = [d / f"{tower}{suffix}.onnx" for d in dirs]
                nodes = [len(onnx.load(str(p), load_external_data=False).graph.node) for p in paths]
                # Two sessions alive at once: spinning workers would slow each other.
                sessions = [
                    create_session(p, SessionOptions(intra_op_threads=2, allow_spinning=False, precision=precision))
                    for p in paths
                ]
                outputs = [s.run(None, {name: feed})[0] for s in sessions]
                before, after = time_interleaved(
                    [lambda s=s: s.run(None, {name: feed}) for s in sessions], rounds=args.runs, warmup=3
                )
                delta = np.abs(outputs[0] - outputs[1]).max()
                lines.append(
                    f"| {model} | {tower} | {precision} | {nodes[0]} → {nodes[1]} | {before:.2f} | {after:.2f} | {after / before:.3f} | {delta:.1e} |"
                )
                print(lines[-1], file=sys.stderr)
                del sessions
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batch_first_attention.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
