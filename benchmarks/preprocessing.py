"""Preprocessing for vectorise(): the report's per-stage breakdown and every variant's time and fidelity.

    python benchmarks/preprocessing.py [--model ViT-B/32]

Runs `clip-export bench`'s visual-tower pass at batch 1 on the fp32 export in benchmarks/.work
(exported with random weights if missing): torch eager and onnxruntime side by side, then the
vectorise() breakdown for the report's RGBA PNG and JPEG, and each preprocessing variant against
open_clip's own transform on the bundled images. Then the runtime's default preprocessing against
PIL's on decoded photos of common sizes (seeded random pixels, checked equal bit for bit). Prints
the Markdown that docs/benchmarks.md quotes.
"""

from __future__ import annotations

import argparse

import numpy as np
from cpu_report import exported  # this directory is on sys.path when a script here runs
from PIL import Image

from clip_export.core.manifest import read_manifest
from clip_export.core.preprocess import preprocess_fast, preprocess_reference
from clip_export.stages.bench.bench import bench
from clip_export.stages.bench.bench_report import render_markdown
from clip_export.stages.bench.timing import time_interleaved

PHOTO_SIZES = [(640, 427), (1024, 768), (1920, 1080), (4032, 3024), (6000, 4000), (1080, 1920)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per timed row")
    args = parser.parse_args()
    model_dir = exported(args.model)
    result = bench(
        model_dir,
        batch_sizes=(1,),
        towers=("visual",),
        precisions=("fp32",),
        threads=2,
        budget_s=args.budget,
        write=False,
        chart=False,
    )
    print(render_markdown(result))
    config = read_manifest(model_dir).preprocess
    rng = np.random.default_rng(0)
    print("## Decoded photos of common sizes\n")
    print("| size | mode | PIL (`exact`) p50 ms | vectorised (`fast`) p50 ms | speed-up | pixels equal |")
    print("|---|---|---|---|---|---|")
    for size in PHOTO_SIZES:
        for mode in ("RGB", "RGBA"):
            image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA").convert(mode)
            equal = np.array_equal(preprocess_fast(image, config), preprocess_reference(image, config))
            exact_ms, fast_ms = time_interleaved(
                [lambda: preprocess_reference(image, config), lambda: preprocess_fast(image, config)],
                rounds=10,
                warmup=2,
                budget_s=3.0,
            )
            print(
                f"| {size[0]}×{size[1]} | {mode} | {exact_ms:.2f} | {fast_ms:.2f} | {exact_ms / fast_ms:.1f}× | {'yes' if equal else 'NO'} |"
            )


if __name__ == "__main__":
    main()
