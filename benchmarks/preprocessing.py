"""Preprocessing for vectorise(): the report's per-stage breakdown and every variant's time and fidelity.

    python benchmarks/preprocessing.py [--model ViT-B/32]

Runs `clip-export bench`'s visual-tower pass at batch 1 on the fp32 export in benchmarks/.work
(exported with random weights if missing): torch eager and onnxruntime side by side, then the
vectorise() breakdown for the report's RGBA PNG and JPEG, and each preprocessing variant against
open_clip's own transform on the bundled images. Prints the Markdown that docs/benchmarks.md quotes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from clip_export import export_onnx, resolve
from clip_export.bench import bench, render_markdown

WORK = Path(__file__).parent / ".work"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per timed row")
    args = parser.parse_args()
    spec = resolve(args.model, random_init=True, seed=0)
    model_dir = WORK / spec.slug
    if not (model_dir / "manifest.json").exists():
        export_onnx(spec, out=WORK, force=True)
    result = bench(model_dir, batch_sizes=(1,), towers=("visual",), precisions=("fp32",), threads=2, budget_s=args.budget, write=False, chart=False)
    print(render_markdown(result))


if __name__ == "__main__":
    main()
