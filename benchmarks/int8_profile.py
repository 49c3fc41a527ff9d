"""Where batch-1 time goes in the INT8 and fp32 image towers: onnxruntime's per-node profile.

    python benchmarks/int8_profile.py [--model ViT-B/32] [--runs 30]

Uses the artifacts under benchmarks/.work (run benchmarks/cpu_report.py first) and prints the
share of node time per op type, for the fp32 and the INT8 visual tower.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from clip_export.core.models import resolve
from clip_export.core.sessions import SessionOptions, create_session

WORK = Path(__file__).parent / ".work"


def profile(path: Path, runs: int) -> dict[str, float]:
    options = SessionOptions(intra_op_threads=2, profile_prefix=str(path.parent / f".profile-{path.stem}"))
    session = create_session(path, options)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    for _ in range(5):
        session.run(None, {"pixel_values": x})
    session.end_profiling()
    session = None
    session = create_session(
        path, dataclasses.replace(options, profile_prefix=str(path.parent / f".profile-{path.stem}-timed"))
    )
    for _ in range(5):
        session.run(None, {"pixel_values": x})
    for _ in range(runs):
        session.run(None, {"pixel_values": x})
    trace = Path(session.end_profiling())
    totals: dict[str, float] = defaultdict(float)
    for event in json.loads(trace.read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"]
    for leftover in path.parent.glob(".profile-*"):
        leftover.unlink()
    scale = 1.0 / (runs + 5) / 1000.0  # ms per run (warm-up runs of this session included)
    return {op: us * scale for op, us in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    model_dir = WORK / resolve(args.model, random_init=True).slug
    print(f"{args.model}, visual tower, batch 1, onnxruntime CPU, 2 threads: node time per run by op type\n")
    print("| artifact | op type | ms per run | share |")
    print("|---|---|---|---|")
    for name in ("visual.onnx", "visual.int8.onnx"):
        totals = profile(model_dir / name, args.runs)
        whole = sum(totals.values())
        for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:8]:
            print(f"| {name} | {op} | {ms:.2f} | {ms / whole * 100:.0f}% |")
        print(f"| {name} | **all nodes** | **{whole:.2f}** | 100% |")


if __name__ == "__main__":
    main()
