"""MobileCLIP's image tower exported as trained (MobileOne/FastViT branches) and reparameterized
(what the family rule does before export): ONNX nodes and batch-1 latency side by side.

    python benchmarks/mobileclip_reparam.py                 # MobileCLIP2-S0
    python benchmarks/mobileclip_reparam.py MobileCLIP-S1

Random weights, offline; one onnxruntime session at a time (2-core machines lose p50 to spinning
threads of idle sessions). Prints Markdown for docs/models.md.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(model: str = "MobileCLIP2-S0", runs: int = 60) -> None:
    import onnx
    import open_clip
    import torch

    from clip_export.core.models import load_model, resolve
    from clip_export.core.sessions import SessionOptions, create_session
    from clip_export.stages.export import export_tower, parity_check

    spec = resolve(model, random_init=True)
    folded = load_model(spec)
    torch.manual_seed(spec.seed)
    unfolded = dataclasses.replace(folded, model=open_clip.create_model(spec.arch, pretrained=None).float().eval())
    h, w = folded.preprocess.image_size
    pixels = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    with torch.no_grad():
        a = folded.model.encode_image(torch.from_numpy(pixels), normalize=True)
        b = unfolded.model.encode_image(torch.from_numpy(pixels), normalize=True)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for label, loaded in (
            ("as trained", unfolded),
            (f"reparameterized ({folded.reparameterized_modules} modules)", folded),
        ):
            path = Path(scratch) / f"{len(rows)}.onnx"
            export_tower(loaded, "visual", path)
            nodes = len(onnx.load(str(path), load_external_data=False).graph.node)
            parity = parity_check(loaded, "visual", path, normalize=False)[0]
            session = create_session(path, SessionOptions(stop_spinning_after_run=True))
            for _ in range(5):
                session.run(None, {"pixel_values": pixels})
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                session.run(None, {"pixel_values": pixels})
                times.append((time.perf_counter() - started) * 1e3)
            del session
            rows.append(
                (
                    label,
                    nodes,
                    path.stat().st_size / 1e6,
                    float(np.percentile(times, 50)),
                    float(np.percentile(times, 90)),
                    parity,
                )
            )
    print(
        f"{model} image tower, {h}x{w}, batch 1, onnxruntime CPU fp32, {runs} runs after 5 warm-up; torch folded vs unfolded mean |Δ| {float((a - b).abs().mean()):.1e}\n"
    )
    print("| graph | ONNX nodes | MB | p50 ms | p90 ms | export parity mean \\|Δ\\| |")
    print("|---|---|---|---|---|---|")
    for label, nodes, mb, p50, p90, parity in rows:
        print(f"| {label} | {nodes} | {mb:.1f} | {p50:.2f} | {p90:.2f} | {parity:.1e} |")


if __name__ == "__main__":
    main(*sys.argv[1:2])
