"""Every ONNX variant of ViT-B/32 (random weights): size, batch-1 speed against fp32 side by side, fidelity.

    python benchmarks/variants.py [--rounds 20]

Needs benchmarks/.work/ViT-B-32 with its variants (clip-export fp16/int8/q4 DIR). Each tower's
variants run interleaved at batch 1 on 2 threads; fidelity is verify's, against the fp32 torch reference.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from clip_export.core.manifest import read_manifest
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.stages.bench.timing import time_interleaved
from clip_export.stages.verify import verify


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=Path(__file__).parent / ".work" / "ViT-B-32")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    manifest = read_manifest(args.dir)
    checks = {c.path: c for c in verify(args.dir, write=False, only=lambda e: e.format == "onnx").checks}
    ref = np.load(args.dir / "reference.npz")
    print(
        "| artifact | MB | size vs fp32 | batch-1 p50 ms | fp32 ÷ this (speed-up) | mean abs diff (norm.) | min cosine | top-1 agreement | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for tower, name in (("visual", "pixel_values"), ("text", "input_ids")):
        entries = [a for a in manifest.artifacts if a.tower == tower and a.format == "onnx"]
        x = ref[name][:1]
        sessions = [
            create_session(
                args.dir / a.path,
                SessionOptions(intra_op_threads=2, precision="fp16" if a.precision == "fp16" else "fp32"),
            )
            for a in entries
        ]
        times = time_interleaved([lambda s=s: s.run(None, {name: x}) for s in sessions], rounds=args.rounds, warmup=2)
        base = next(i for i, a in enumerate(entries) if a.precision == "fp32")
        for a, ms in zip(entries, times):
            c = checks[a.path]
            print(
                f"| {a.path} | {a.bytes / 1e6:.1f} | {a.bytes / entries[base].bytes:.2f} | {ms:.2f} | {times[base] / ms:.2f} | {c.metric('mean_abs_normalized'):.2e} | {c.metric('min_cosine'):.4f} | {c.min_top1:.3f} | {c.status} |"
            )


if __name__ == "__main__":
    main()
