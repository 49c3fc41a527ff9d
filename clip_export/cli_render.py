"""What the CLI prints: JSON, aligned tables, sizes in binary units, and each command's result."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import click

from clip_export.core.manifest import to_jsonable
from clip_export.core.spec import provider_label


def emit_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        return f"{value:.2e}" if abs(value) < 1e-2 or abs(value) >= 1e5 else f"{value:.3f}"
    return str(value)


def human_bytes(n: int) -> str:
    """Binary units, named as such: 1 MiB is 1024**2 bytes."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def verify_text(result: Any) -> str:
    rows = []
    for c in result.checks:
        rows.append(
            (
                c.path,
                c.provider_ran or f"{c.provider_requested} (did not run)",
                c.threshold_set,
                c.metric("mean_abs_raw"),
                c.metric("mean_abs_normalized"),
                c.metric("max_abs_normalized"),
                c.metric("min_cosine"),
                c.min_top1,
                "PASS" + c.status[4:] if c.status.startswith("pass (") else c.status.upper(),
            )
        )
    header = f"{result.model_dir}  (reference: {result.reference}; set: {result.evalset})"
    body = table(
        [
            "artifact",
            "provider",
            "limits",
            "mean |Δ| raw",
            "mean |Δ| norm",
            "max |Δ| norm",
            "min cos",
            "top-1 agree",
            "verdict",
        ],
        rows,
    )
    # Only environments where an artifact actually ran: a provider that is not here is no claim about it.
    ran = [c for c in result.checks if c.environment and c.provider_ran]
    where = sorted({c.environment.describe() for c in ran})
    others = len({r.environment_key for r in result.history if r.environment_key} - {c.environment.key for c in ran})
    tail = "verdicts hold for these bytes on: " + ("; ".join(where) if where else "no environment (nothing ran here)")
    not_run = sorted({c.provider_requested for c in result.checks if c.provider_missing})
    if not_run:
        tail += f"\nnot run here, so no verdict: {', '.join(not_run)}"
    if others:
        tail += f"\n(the manifest also keeps verdicts from {others} other environment(s); VERIFY.md lists them)"
    if result.report_path:
        tail += f"\nreport: {result.report_path}"
    return f"{header}\n{body}\n{tail}\n"


def render_conversion(results: Sequence[Any], as_json: bool) -> None:
    if as_json:
        emit_json(results)
        return
    for result in results:
        rows = [
            (
                a.source,
                a.path,
                human_bytes(a.bytes),
                a.mean_abs_normalized,
                a.min_top1,
                a.verdict.upper(),
                f"{a.seconds:.1f}s",
            )
            for a in result.artifacts
        ]
        click.echo(f"{result.model_dir} ({result.precision})")
        click.echo(table(["from", "artifact", "size", "mean |Δ| norm", "top-1 agree", "verify", "time"], rows))
        for a in result.artifacts:
            if a.details.get("fusions"):
                click.echo(f"  {a.path} fusions: " + ", ".join(f"{k}={v}" for k, v in a.details["fusions"].items()))
        for note in getattr(result, "notes", ()):
            click.echo(f"  note: {note}")


def bench_text(r: Any) -> str:
    """One bench result as the table a terminal shows, with its notes and where it was measured."""
    from clip_export.stages.bench.bench_report import share

    rows = [
        (
            row.tower,
            row.batch,
            row.name,
            row.precision,
            provider_label(row.provider_ran or row.provider_requested),
            row.p50_ms,
            row.latency.p90_ms if row.latency else None,
            row.latency.p99_ms if row.latency else None,
            row.throughput_per_s,
            row.speedup_vs_torch,
            share(row.ceiling_share) if row.ceiling_share else None,
            share(row.streamed_ceiling_share) if row.streamed_ceiling_share else None,
            row.status,
        )
        for row in r.rows
    ]
    lines = [
        f"{r.model_dir}  ({r.machine['cpu']}, {r.machine['threads_used']} threads; GEMM ceiling fp32 "
        f"{r.ceilings_gflops['fp32']:.0f} GFLOP/s, int8 {r.ceilings_gflops['int8']:.0f} GOP/s)",
        table(
            [
                "tower",
                "batch",
                "name",
                "prec",
                "provider",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "items/s",
                "x torch",
                "% ceiling",
                "% streamed",
                "status",
            ],
            rows,
        ),
        *[f"note: {note}" for note in r.notes],
        f"{len(r.rows)} rows in {r.seconds:.0f} s; figures hold for this CPU ({r.machine.get('tier', '?')}). "
        f"report: {r.report_path}  chart: {r.chart_path}\n",
    ]
    return "\n".join(lines)


def pipeline_text(result: Any) -> str:
    """The pipeline's summary: stages passed (and kept from an earlier run), one row per artifact
    with what its gate measured, and the environment the verdicts hold for."""
    rows = [
        (
            r.artifact,
            r.tower,
            r.precision,
            r.format,
            human_bytes(r.bytes),
            r.verdict.upper(),
            r.mean_abs_normalized,
            r.min_top1,
            r.batch1_p50_ms,
            provider_label(r.provider),
        )
        for r in result.summary
    ]
    resumed = f" (kept from an earlier run: {', '.join(result.resumed)})" if result.resumed else ""
    lines = [
        f"{result.model_dir}: stages passed: {', '.join(result.stages_done) or 'none'}{resumed}",
        table(
            [
                "artifact",
                "tower",
                "prec",
                "format",
                "size",
                "verdict",
                "mean |Δ| norm",
                "top-1 agree",
                "batch-1 p50 ms",
                "provider",
            ],
            rows,
        ),
    ]
    if result.environments:
        lines.append("verdicts hold for these bytes on: " + "; ".join(result.environments))
    lines += [f"note: {note}" for note in getattr(result, "notes", ())]
    return "\n".join(lines)


def progress_printer(quiet: bool) -> Callable[[str], None]:
    """Progress lines on stderr with the seconds since the command started; nothing under --quiet."""
    started = time.perf_counter()

    def report(message: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - started:6.1f}s] {message}", err=True)

    return report
