"""Does clip-export's attention rewrite speed up the fp32 towers on CPU?

    python benchmarks/fp32_attention_fusion.py [--models ViT-B/32,ViT-L/14] [--runs 40]

Applies `graph_surgery.fuse_attention` (com.microsoft.MultiHeadAttention) to the exported fp32 image
tower under benchmarks/.work (run cpu_report.py first), and times it against the plain export at
batch 1, alternating the two sessions call by call so that drift hits both alike.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx

from clip_export import resolve
from clip_export.core.graph_surgery import fuse_attention
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.stages.bench.timing import time_interleaved

WORK = Path(__file__).parent / ".work"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print("| model | plain p50 ms | fused p50 ms | fused / plain | attention blocks fused | max abs Δ |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        plain_path = WORK / resolve(name, random_init=True).slug / "visual.onnx"
        model = onnx.load(str(plain_path))
        fused_count = fuse_attention(model)
        with tempfile.TemporaryDirectory() as tmp:
            fused_path = Path(tmp) / "visual.fused.onnx"
            onnx.save(model, str(fused_path))
            del model
            # Spinning off: two sessions are alive, and spinning workers would slow each other.
            options = SessionOptions(intra_op_threads=2, allow_spinning=False)
            sessions = [create_session(plain_path, options), create_session(fused_path, options)]
            pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
            outputs = [s.run(None, {"pixel_values": pixels})[0] for s in sessions]
            plain, fused = time_interleaved(
                [lambda s=s: s.run(None, {"pixel_values": pixels}) for s in sessions], rounds=args.runs
            )
            print(
                f"| {name} | {plain:.1f} | {fused:.1f} | {fused / plain:.3f} | {fused_count} | {np.abs(outputs[0] - outputs[1]).max():.1e} |"
            )


if __name__ == "__main__":
    main()
