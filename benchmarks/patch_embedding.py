"""What the MatMul patch embedding (clip_export.core.patch_embedding) buys the image tower at batch 1.

    python benchmarks/patch_embedding.py [--models ViT-B/32,ViT-L/14] [--rounds 40]

For each model (random weights, seed 0) exports the image tower twice in this run, with the
patch-embedding Conv as torch traces it and as a MatMul (the default), quantizes both with the
served QInt8 scheme (`clip-export int8`'s settings, final projection float), and times the four
files interleaved at batch 1 (2 threads, sessions parked after each run), with their fidelity to
the unpatched torch model on 16 random images. Prints Markdown with the CPU named.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np


def quantized(source: Path, target: Path, family: str = "vnni") -> Path:
    """The INT8 file of one kernel family (spec.INT8_FAMILIES; the QInt8 one by default), made by the
    same call `clip-export int8` makes. benchmarks/text_padding_trim.py uses it too."""
    import onnx

    from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions
    from clip_export.core.spec import INT8_FAMILIES
    from clip_export.stages.quantize8.int8_build import quantize_weights

    model = onnx.load(str(source))
    quantize_weights(
        model, target, INT8_FAMILIES[family].scheme, quantizer_exclusions(model, int8_excluded_nodes(model))
    )
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    import torch

    from clip_export import resolve
    from clip_export.core.environment import current_environment
    from clip_export.core.manifest import now_iso
    from clip_export.core.metrics import l2_normalize
    from clip_export.core.models import load_model
    from clip_export.core.sessions import SessionOptions, create_session
    from clip_export.stages.bench.timing import time_interleaved
    from clip_export.stages.export import export_tower

    env = current_environment("CPUExecutionProvider")
    parked = SessionOptions(intra_op_threads=2, stop_spinning_after_run=True)
    rows = []
    for model in args.models.split(","):
        loaded = load_model(resolve(model, random_init=True, seed=0))
        size = loaded.preprocess.image_size
        pixels = np.random.default_rng(0).standard_normal((16, 3, *size)).astype(np.float32)
        with torch.no_grad():
            expected = l2_normalize(loaded.model.encode_image(torch.from_numpy(pixels)).numpy())
        with tempfile.TemporaryDirectory(prefix="patch-embedding-") as tmp:
            files = {}
            for label, as_matmul in (("Conv (torch's trace)", False), ("MatMul (the default)", True)):
                path = Path(tmp) / f"visual-{int(as_matmul)}.onnx"
                print(f"exporting {model} with the patch embedding as {label}", file=sys.stderr)
                export_tower(loaded, "visual", path, matmul_patch_embedding=as_matmul)
                files[f"fp32, {label}"] = (path, "fp32")
                files[f"INT8 QInt8, {label}"] = (quantized(path, path.with_suffix(".int8.onnx")), "int8")
            sessions = {k: create_session(p, parked) for k, (p, _) in files.items()}
            one = {"pixel_values": pixels[:1]}
            p50 = dict(
                zip(
                    sessions,
                    time_interleaved(
                        [lambda s=s: s.run(None, one) for s in sessions.values()], rounds=args.rounds, warmup=5
                    ),
                )
            )
            base, shipped = p50["fp32, Conv (torch's trace)"], p50["fp32, MatMul (the default)"]
            for label, session in sessions.items():
                got = l2_normalize(
                    np.concatenate([session.run(None, {"pixel_values": pixels[i : i + 1]})[0] for i in range(16)])
                )
                rows.append(
                    (
                        model,
                        label,
                        p50[label],
                        base / p50[label],
                        shipped / p50[label],
                        float(np.abs(got - expected).mean()),
                    )
                )
            sessions.clear()
    print(
        f"\n{now_iso()}, {env.cpu} ({env.cpu_target}, {env.tier}); flags that select kernels: "
        f"{', '.join(env.isa_flags) or 'none'}; onnxruntime {env.onnxruntime}; 2 threads, batch 1, "
        f"{args.rounds} interleaved rounds, random weights (seed 0).\n"
    )
    print(
        "| model | image tower | p50 ms | × fp32 with Conv | × fp32 with MatMul (shipped) "
        "| mean \\|Δ\\| to torch (norm., 16 images) |"
    )
    print("|---|---|---|---|---|---|")
    for model, label, ms, ratio, ratio_shipped, delta in rows:
        print(f"| {model} | {label} | {ms:.2f} | {ratio:.2f} | {ratio_shipped:.2f} | {delta:.1e} |")


if __name__ == "__main__":
    main()
