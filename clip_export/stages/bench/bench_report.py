"""bench's report: BENCH.md and the batch-1 chart, rendered from a BenchResult."""

from __future__ import annotations

import os
from pathlib import Path

from clip_export.core.spec import provider_label
from clip_export.stages.bench.bench_rows import BenchResult


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def share(value: float | None) -> str:
    """A ceiling share in percent; above 100% it is flagged, since no row can beat the machine's limit."""
    if value is None:
        return "-"
    return f"{value * 100:.0f}" + (" (>100%: noise)" if value > 1 else "")


def render_markdown(result: BenchResult) -> str:
    m = result.machine
    lines = [
        f"# Benchmark of {result.model_dir.name}",
        "",
        f"Measured {result.date} on {m['cpu']} ({m.get('cpu_target', '?')}, {m.get('tier', '?')}; "
        f"{m['cores']} cores, {m['threads_used']} threads pinned{', GPU ' + m['gpu'] if m.get('gpu') else ''}), "
        f"in {result.seconds:.0f} s. "
        "These figures hold for this CPU: onnxruntime and torch pick other kernels on other ones.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result.versions.items())}.",
        "GEMM ceiling through onnxruntime on this machine, the higher of two measurements taken before "
        f"and after the rows: fp32 {result.ceilings_gflops['fp32']:.0f} GFLOP/s, int8 {result.ceilings_gflops['int8']:.0f} "
        "GOP/s.",
        "FLOPs per item (torch FlopCounterMode): "
        + ", ".join(f"{k} {v / 1e9:.2f} GFLOP" for k, v in result.flops_per_item.items())
        + ".",
    ]
    if result.streamed_ceilings_gflops or result.streamed_int8_ceilings_gops:
        lines.append(
            "Streamed-weights limit at batch 1 (the tower's own weight products, each weight read from "
            "memory once per item, as one document at a time must): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result.streamed_ceilings_gflops.items())
            + (
                "; with 1-byte weights (MatMulInteger, what an INT8 artifact streams): "
                + ", ".join(f"{k} {v:.0f} GOP/s" for k, v in result.streamed_int8_ceilings_gops.items())
                if result.streamed_int8_ceilings_gops
                else ""
            )
            + '; "% of streamed" compares fp32 and INT8 batch-1 rows with the limit for their weights.'
        )
    lines += [
        "",
        "| tower | batch | name | precision | provider ran | p50 ms | p90 ms | p99 ms | items/s | "
        "× torch eager | GFLOP/s | % of ceiling | % of streamed | session ms | first run ms | copies "
        "ms | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lat = r.latency
        lines.append(
            f"| {r.tower} | {r.batch} | {r.name} | {r.precision} | {r.provider_ran or r.provider_requested + ' (did not run)'} "
            "| "
            f"{_fmt(lat.p50_ms if lat else None)} | {_fmt(lat.p90_ms if lat else None)} | {_fmt(lat.p99_ms if lat else None)} "
            f"| {_fmt(r.throughput_per_s, 1)} | "
            f"{_fmt(r.speedup_vs_torch)} | {_fmt(r.gflops_per_s, 0)} | {share(r.ceiling_share)} | {share(r.streamed_ceiling_share)} "
            "| "
            f"{_fmt(r.session_create_ms, 0)} | {_fmt(r.first_inference_ms, 1)} | {_fmt(r.copy_overhead_ms)} "
            f"| {r.status} |"
        )
    if result.breakdown:
        lines += [
            "",
            "## vectorise() for one image",
            "",
            "| image | size | engine | load ms | preprocess ms | inference ms | to numpy ms | total ms |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in result.breakdown:
            lines.append(
                f"| {s.image} | {s.size} | {s.engine} | {_fmt(s.load_ms)} | {_fmt(s.preprocess_ms)} | {_fmt(s.inference_ms)} "
                f"| {_fmt(s.to_numpy_ms, 3)} | {_fmt(s.total_ms)} |"
            )
    if result.preprocessing:
        lines += [
            "",
            "## Preprocessing variants",
            "",
            "| variant | PNG 2162×762 RGBA ms | JPEG 640×427 ms | max pixel |Δ| | embedding mean |Δ| "
            "(norm.) | image→image top-1 | within fp32 tolerance |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in result.preprocessing:
            lines.append(
                f"| {p.variant} | {_fmt(p.png_ms)} | {_fmt(p.jpeg_ms)} | {_fmt(p.pixel_max_abs, 4)} | {'-' if p.embed_mean_abs_normalized is None else f'{p.embed_mean_abs_normalized:.2e}'} "
                f"| {_fmt(p.image2image_top1, 3)} | {'-' if p.within_fp32_tolerance is None else ('yes' if p.within_fp32_tolerance else 'no')} "
                "|"
            )
    lines += ["", f"Peak RSS of the benchmark process: {result.peak_rss_mb:.0f} MB."]
    lines += [f"Note: {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def render_chart(result: BenchResult, path: Path) -> Path | None:
    """A bar chart of batch-1 p50 per artifact and provider, the figure people look at first."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in result.rows if r.batch == 1 and r.latency is not None]
    if not rows:
        return None
    towers = sorted({r.tower for r in rows})
    fig, axes = plt.subplots(
        1,
        len(towers),
        figsize=(6 * len(towers), 0.5 * max(len([r for r in rows if r.tower == t]) for t in towers) + 1.8),
        squeeze=False,
    )
    for axis, tower in zip(axes[0], towers):
        subset = [r for r in rows if r.tower == tower]
        labels = [f"{r.name}\n{provider_label(r.provider_ran)}" for r in subset]
        values = [r.latency.p50_ms for r in subset]  # type: ignore[union-attr]
        colors = ["#999999" if r.kind == "baseline" else "#3b75af" for r in subset]
        axis.barh(labels, values, color=colors)
        for y, v in enumerate(values):
            axis.text(v, y, f" {v:.1f}", va="center", fontsize=8)
        axis.set_title(f"{result.model_dir.name} {tower} tower, batch 1 (p50)")
        axis.set_xlabel("ms (lower is better; grey = baseline)")
        axis.invert_yaxis()
        axis.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # a reader never sees half a chart
    try:
        fig.savefig(staging, dpi=110, format="png")
        os.replace(staging, path)
    finally:
        staging.unlink(missing_ok=True)
        plt.close(fig)
    return path
