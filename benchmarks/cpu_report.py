"""CPU report for the bench issue: batch-1 latency of ViT-B/32 and ViT-L/14 (random weights).

    python benchmarks/cpu_report.py [--models ViT-B/32,ViT-L/14] [--budget 3]

Exports each model (if not already under benchmarks/.work), builds the INT8 artifacts, then runs
`clip-export bench` at batch 1 with torch eager fp32, torch bf16 autocast, ORT fp32, ORT fp32
through the transformer optimizer and ORT INT8 side by side in one process. Writes
benchmarks/results/cpu_<slug>.json and prints Markdown for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from clip_export import export_onnx, resolve
from clip_export.core.manifest import read_manifest, to_jsonable
from clip_export.stages.bench.bench import bench
from clip_export.stages.quantize8.quantize8 import quantize_int8

WORK = Path(__file__).parent / ".work"
RESULTS = Path(__file__).parent / "results"


def exported(model: str, out: Path = WORK, batch_first_attention: bool = True) -> Path:
    """OUT/<slug> with the fp32 export of the random-weight model, exported only if missing."""
    spec = resolve(model, random_init=True, seed=0)
    model_dir = out / spec.slug
    if not (model_dir / "manifest.json").exists():
        export_onnx(
            spec,
            out=out,
            force=True,
            batch_first_attention=batch_first_attention,
            progress=lambda m: print(f"  {m}", file=sys.stderr),
        )
    return model_dir


def prepare(model: str, out: Path = WORK, batch_first_attention: bool = True) -> Path:
    """OUT/<slug> with the fp32 export and its INT8 artifacts, made only where missing."""
    model_dir = exported(model, out, batch_first_attention)
    if read_manifest(model_dir).find(precision="int8") is None:
        quantize_int8(model_dir, progress=lambda m: print(f"  {m}", file=sys.stderr))
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--budget", type=float, default=3.0)
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    for model in args.models.split(","):
        print(f"{model}: preparing", file=sys.stderr)
        model_dir = prepare(model)
        result = bench(
            model_dir,
            providers=["cpu"],
            batch_sizes=[1],
            precisions=["fp32", "int8"],
            budget_s=args.budget,
            fused_baseline=True,
            breakdown=True,
            progress=lambda m: print(f"  {m}", file=sys.stderr),
        )
        (RESULTS / f"cpu_{model_dir.name}.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
        m = result.machine
        print(f"\n### {model} (random weights), batch 1\n")
        print(
            f"{result.date}, {m['cpu']}, {m['cores']} cores, {m['threads_used']} threads; GEMM ceiling fp32 {result.ceilings_gflops['fp32']:.0f} GFLOP/s, int8 {result.ceilings_gflops['int8']:.0f} GOP/s; "
            + ", ".join(f"{t} {f / 1e9:.1f} GFLOP/item" for t, f in result.flops_per_item.items())
            + "; streamed-weights limit "
            + ", ".join(f"{t} {g:.0f} GFLOP/s" for t, g in result.streamed_ceilings_gflops.items())
            + " (fp32 weights); "
            + ", ".join(f"{t} {g:.0f} GOP/s" for t, g in result.streamed_int8_ceilings_gops.items())
            + " (1-byte weights).\n"
        )
        print(
            "| tower | row | provider | p50 ms | p90 ms | p99 ms | × torch eager | × ORT fp32 | GFLOP/s | % of ceiling | % of streamed limit |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        fp32 = {
            r.tower: r.latency.p50_ms
            for r in result.rows
            if r.name.endswith(".onnx") and r.precision == "fp32" and r.latency
        }
        for r in result.rows:
            if r.latency is None:
                print(f"| {r.tower} | {r.name} | {r.status} |" + " - |" * 8)
                continue
            share = f"{r.ceiling_share * 100:.0f}%" if r.ceiling_share else "-"
            streamed = f"{r.streamed_ceiling_share * 100:.0f}%" if r.streamed_ceiling_share else "-"
            vs_fp32 = f"{fp32[r.tower] / r.latency.p50_ms:.2f}" if r.tower in fp32 and r.kind == "artifact" else "-"
            print(
                f"| {r.tower} | {r.name} | {r.provider_ran} | {r.latency.p50_ms:.1f} | {r.latency.p90_ms:.1f} | {r.latency.p99_ms:.1f} | {r.speedup_vs_torch:.2f} | {vs_fp32} | {r.gflops_per_s or 0:.0f} | {share} | {streamed} |"
            )
        if result.breakdown:
            print(
                "\n| image | engine | load ms | preprocess ms | inference ms | to numpy ms | total ms |\n|---|---|---|---|---|---|---|"
            )
            for s in result.breakdown:
                print(
                    f"| {s.image} ({s.size}) | {s.engine} | {s.load_ms:.2f} | {s.preprocess_ms:.2f} | {s.inference_ms:.2f} | {s.to_numpy_ms:.3f} | {s.total_ms:.2f} |"
                )
        if result.preprocessing:
            print(
                "\n| variant | PNG ms | JPEG ms | max pixel Δ | embedding mean Δ (norm.) | image→image top-1 | within fp32 tolerance |\n|---|---|---|---|---|---|---|"
            )
            for p in result.preprocessing:
                delta = "-" if p.embed_mean_abs_normalized is None else f"{p.embed_mean_abs_normalized:.1e}"
                print(
                    f"| {p.variant} | {p.png_ms:.2f} | {p.jpeg_ms:.2f} | {p.pixel_max_abs:.4f} | {delta} | {p.image2image_top1:.3f} | {'yes' if p.within_fp32_tolerance else 'no'} |"
                )


if __name__ == "__main__":
    main()
