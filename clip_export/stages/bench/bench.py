"""Bench stage: latency of every artifact × provider × batch, next to torch baselines from the same run.

Timing discipline: warm-up runs are discarded, each row runs for a time budget (and at least a
minimum count), one onnxruntime session is alive at a time, thread counts are pinned and recorded, and
on CUDA inputs and outputs stay on the device (IO binding), the host↔device copy measured apart.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import Manifest
from clip_export.core.checks import load_reference
from clip_export.core.configs import NO_LOCAL_SOURCES, LocalSources
from clip_export.core.environment import versions
from clip_export.core.errors import ClipExportError
from clip_export.core.manifest import (
    atomic_write_text,
    now_iso,
    read_manifest,
    to_jsonable,
    write_manifest,
)
from clip_export.core.progress import Progress, silent
from clip_export.core.sessions import provider_name
from clip_export.core.spec import (
    CPU_PROVIDER,
    DEFAULT_BENCH_MAX_TIME_S,
    ONNX_FORMAT,
    PRECISION_SPECS,
    PREPROCESSING_FORMAT,
    TENSORRT_FORMAT,
    TENSORRT_RUNTIME,
)
from clip_export.stages.bench.baselines import TORCH_MODES, bench_torch, native_bf16
from clip_export.stages.bench.bench_one import bench_entry, bench_fused, inputs_for, with_ratios
from clip_export.stages.bench.bench_report import render_chart, render_markdown
from clip_export.stages.bench.bench_rows import BenchResult, BenchRow, machine_info, peak_rss_mb
from clip_export.stages.bench.ceilings import count_tower, cut_text_flops, gemm_ceiling, streamed_gemm_ceiling
from clip_export.stages.bench.preprocessing_study import (
    PreprocessRow,
    StageTimes,
    preprocessing_variants,
    vectorise_breakdown,
)
from clip_export.stages.bench.timing import refuse_emulated_cpu

# ---- the stage ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlannedRow:
    description: str
    tower: str
    batch: int
    measure: Callable[[float], BenchRow]  # the row's time budget in seconds -> the row
    skipped: BenchRow  # what the table shows if the total time runs out before this row


# The key under which a padding-cutting text tower keeps torch's whole-context FLOPs and limit.
WHOLE_TEXT = "text (whole context, torch)"


def _skipped(row: BenchRow, why: str) -> BenchRow:
    return dataclasses.replace(row, provider_ran=None, status=f"skipped: {why}", latency=None)


def bench(
    model_dir: Path,
    *,
    providers: Sequence[str] = ("cpu",),
    batch_sizes: Sequence[int] = (1, 8, 32),
    towers: Sequence[str] = ("visual", "text"),
    threads: int | None = None,
    budget_s: float = 2.0,
    max_time_s: float | None = DEFAULT_BENCH_MAX_TIME_S,
    baselines: bool = True,
    compile_baseline: bool = False,
    fused_baseline: bool = False,
    breakdown: bool = True,
    precisions: Sequence[str] | None = None,
    write: bool = True,
    chart: bool = True,
    progress: Progress = silent,
    sources: LocalSources = NO_LOCAL_SOURCES,
) -> BenchResult:
    """Measure every artifact in DIR's manifest, plus torch baselines, in one process.

    `max_time_s` bounds the whole run: rows are given less time as it runs out, and rows it does
    not reach are listed as skipped. A run in which no artifact row ran raises and writes nothing."""
    started = time.perf_counter()
    deadline = started + max_time_s if max_time_s else float("inf")
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    threads = threads or os.cpu_count() or 1
    if any(b < 1 for b in batch_sizes):
        raise ClipExportError(f"batch sizes must be >= 1, got {', '.join(map(str, batch_sizes))}")
    if max_time_s is not None and max_time_s <= 0:
        raise ClipExportError(f"the total time budget must be positive, got {max_time_s:g} s")
    refuse_emulated_cpu()
    for p in providers:
        provider_name(p)
    present = sorted({a.precision for a in manifest.artifacts})
    if precisions is not None and not set(precisions) & set(present):
        raise ClipExportError(
            f"the requested precision(s) {', '.join(precisions)} match no artifact in {model_dir}; it "
            f"has {', '.join(present)}"
        )
    ref, _, _ = load_reference(model_dir, manifest, "stored", None)  # the manifest's record: release renames the file
    loaded = None
    notes: list[str] = []
    flops: dict[str, float] = {}
    cut_flops: dict[tuple[str, int], float] = {}  # (tower, batch) -> FLOPs per item of a padding-cutting graph
    # The streamed-weights limits to measure at batch 1, by key: (tower, its weight products, the FLOPs they
    # stand for, the limit kinds wanted or None for those of every benched precision).
    limits: dict[str, tuple[str, tuple[tuple[int, int, int], ...], float, set[str] | None]] = {}
    if baselines or fused_baseline:
        try:
            from clip_export.core.models import load_model, spec_from_manifest

            progress("loading the torch model for the baselines")
            loaded = load_model(spec_from_manifest(manifest.model.to_json(), sources))
            for tower in towers:
                flops[tower], shapes = count_tower(loaded, tower)
                limits[tower] = (tower, shapes, flops[tower], None)
            if "text" in towers:
                cut = cut_text_flops(loaded, manifest, {b: inputs_for("text", ref, b) for b in batch_sizes})
                cut_flops = {("text", b): count for b, (count, _) in cut.items()}
                if 1 in cut:  # the artifacts' limit from their own products; torch's (fp32) from the whole context
                    limits[WHOLE_TEXT] = ("text", limits["text"][1], flops["text"], {"fp32"})
                    limits["text"] = ("text", cut[1][1], cut[1][0], None)
            if cut_flops:
                notes.append(
                    "the text artifacts cut trailing padding inside the graph: their GFLOP/s and "
                    "streamed-weights limit count the positions they ran on the benched captions, "
                    "torch eager's the whole context"
                )
        except ImportError as exc:
            notes.append(f"torch baselines skipped: {exc}")
    progress("measuring the GEMM ceiling (fp32, int8) through onnxruntime")
    ceilings_before = {
        "fp32": gemm_ceiling(threads, budget_s=0.75),
        "int8": gemm_ceiling(threads, int8=True, budget_s=0.75),
    }
    streamed: dict[
        str, dict[str, float]
    ] = {}  # tower -> streamed limit kind (PrecisionSpec.streamed_limit) -> G(FL)OP/s
    if 1 in batch_sizes:
        for key, (tower, shapes, counted, wanted) in limits.items():
            # A tower whose products are a minor share of its FLOPs (a ResNet) has no such limit.
            if shapes and sum(2.0 * m * k * n for m, k, n in shapes) >= 0.5 * counted:
                benched = {
                    a.precision
                    for a in manifest.select(tower=tower, format=ONNX_FORMAT)
                    if precisions is None or a.precision in precisions
                }
                kinds = {PRECISION_SPECS[p].streamed_limit for p in benched if p in PRECISION_SPECS} - {None}
                for kind in sorted(kinds & wanted if wanted is not None else kinds):
                    progress(f"measuring the streamed-weights {kind} GEMM limit of the {key} tower at batch 1")
                    streamed.setdefault(key, {})[kind] = (
                        streamed_gemm_ceiling(shapes, threads, budget_s=min(1.0, budget_s), int8=kind == "int8") or 0.0
                    )
    # The preprocessing study after the rows takes about half a minute; rows leave it that time.
    rows_deadline = deadline - (STUDY_RESERVE_S if breakdown and "visual" in towers else 0.0)
    plan = _plan(
        model_dir,
        manifest,
        ref,
        loaded,
        providers=providers,
        batch_sizes=batch_sizes,
        towers=towers,
        threads=threads,
        baselines=baselines,
        compile_baseline=compile_baseline,
        fused_baseline=fused_baseline,
        precisions=precisions,
        progress=progress,
    )
    rows = _run_plan(plan, budget_s, rows_deadline, progress)
    if not any(r.kind == "artifact" and r.latency is not None for r in rows):
        reasons = sorted({r.status for r in rows if r.kind == "artifact"}) or ["no artifact matched"]
        raise ClipExportError(
            f"no artifact row ran, so nothing was written (earlier results in {model_dir} are untouched): "
            f"{'; '.join(reasons)}"
        )
    progress("measuring the GEMM ceiling again, after the rows")
    ceilings_after = {
        "fp32": gemm_ceiling(threads, budget_s=0.75),
        "int8": gemm_ceiling(threads, int8=True, budget_s=0.75),
    }
    # The higher of the two is the machine's limit under the rows' conditions; a share above 100% is flagged.
    ceilings = {k: max(ceilings_before[k], ceilings_after[k]) for k in ceilings_before}

    def work_of(row: BenchRow) -> tuple[float | None, dict[str, float] | None]:
        """FLOPs per item and streamed limit of what the row ran: torch the whole context, an artifact
        of a padding-cutting text graph the benched captions' positions."""
        if (row.provider_ran or "").startswith("torch"):
            whole = WHOLE_TEXT if row.tower == "text" and WHOLE_TEXT in streamed else row.tower
            return flops.get(row.tower), streamed.get(whole)
        return cut_flops.get((row.tower, row.batch), flops.get(row.tower)), streamed.get(row.tower)

    worked = [(r, *work_of(r)) for r in rows]
    rows = [with_ratios(r, _torch_p50(rows, r), count, ceilings, limit) for r, count, limit in worked]
    if any((r.ceiling_share or 0) > 1 or (r.streamed_ceiling_share or 0) > 1 for r in rows):
        notes.append(
            "rows marked '>100%' beat a ceiling measured in the same run: the machine was faster during "
            "that row than during the ceiling's, so those shares are noise, not fact"
        )
    breakdown_rows: list[StageTimes] = []
    variant_rows: list[PreprocessRow] = []
    if breakdown and "visual" in towers:
        if time.perf_counter() < deadline:
            progress(
                f"vectorise() breakdown for one PNG and one JPEG (~{max(0.0, deadline - time.perf_counter()):.0f} "
                "s of the budget left)"
            )
            breakdown_rows = vectorise_breakdown(model_dir, manifest, threads, loaded)
        if time.perf_counter() < deadline:
            progress("preprocessing variants: time and fidelity against the reference pipeline")
            variant_rows = preprocessing_variants(model_dir, manifest, threads)
        if not breakdown_rows or not variant_rows:
            notes.append(
                f"the total time budget ({max_time_s:g} s) ran out before the preprocessing study; rerun with "
                "a larger --max-time"
            )
    skipped_baseline = [r for r in rows if r.status.startswith("skipped: no native bf16")]
    if skipped_baseline:
        notes.append(skipped_baseline[0].status.removeprefix("skipped: "))
    result = BenchResult(
        model_dir,
        tuple(rows),
        machine_info(threads),
        versions(),
        ceilings,
        {**flops, **{f"{tower} (padding cut, batch {batch})": v for (tower, batch), v in cut_flops.items()}},
        {tower: limits["fp32"] for tower, limits in streamed.items() if "fp32" in limits},
        tuple(breakdown_rows),
        tuple(variant_rows),
        streamed_int8_ceilings_gops={tower: limits["int8"] for tower, limits in streamed.items() if "int8" in limits},
        peak_rss_mb=peak_rss_mb(),
        date=now_iso(),
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
    )
    if not write:
        return result
    chart_path = render_chart(result, model_dir / "bench-batch1.png") if chart else None
    report_path = model_dir / "BENCH.md"
    result = dataclasses.replace(result, chart_path=chart_path, report_path=report_path)
    atomic_write_text(report_path, render_markdown(result))
    manifest = read_manifest(model_dir)
    manifest.set_section("benchmark", {k: v for k, v in to_jsonable(result).items() if k != "model_dir"})
    write_manifest(model_dir, manifest)
    return result


STUDY_RESERVE_S = 30.0


def _torch_p50(rows: Sequence[BenchRow], row: BenchRow) -> float | None:
    """The torch eager fp32 p50 for the row's tower and batch, measured in the same run."""
    return next(
        (
            r.p50_ms
            for r in rows
            if r.name == "torch eager-fp32" and r.tower == row.tower and r.batch == row.batch and r.latency
        ),
        None,
    )


def _plan(
    model_dir: Path,
    manifest: Manifest,
    ref: dict[str, np.ndarray],
    loaded: Any,
    *,
    providers: Sequence[str],
    batch_sizes: Sequence[int],
    towers: Sequence[str],
    threads: int,
    baselines: bool,
    compile_baseline: bool,
    fused_baseline: bool,
    precisions: Sequence[str] | None,
    progress: Progress,
) -> list[_PlannedRow]:
    """Every row of the run, in order, so the progress line can count them and estimate the time left."""
    plan: list[_PlannedRow] = []
    bf16_native = native_bf16()
    for tower in towers:
        entries = manifest.select(tower=tower, **({"precision": tuple(precisions)} if precisions is not None else {}))
        for batch in batch_sizes:
            inputs = inputs_for(tower, ref, batch)
            if loaded is not None and baselines:
                modes = (
                    ["eager-fp32", "bf16-autocast"]
                    + (["cuda-fp16"] if any(provider_name(p) != CPU_PROVIDER for p in providers) else [])
                    + (["compile"] if compile_baseline else [])
                )
                for mode in modes:
                    base = BenchRow(
                        f"torch {mode}",
                        "baseline",
                        tower,
                        TORCH_MODES[mode],
                        f"torch-{'cuda' if mode == 'cuda-fp16' else 'cpu'}",
                        None,
                        batch,
                        "",
                        threads=threads,
                    )
                    if mode == "bf16-autocast" and not bf16_native:
                        plan.append(
                            _PlannedRow(
                                f"torch {mode}, {tower}, batch {batch}",
                                tower,
                                batch,
                                lambda _b, base=base: _skipped(
                                    base,
                                    "no native bf16 on this CPU (no avx512_bf16 or AMX): torch emulates it, slower than fp32, "
                                    "so it is no baseline here",
                                ),
                                base,
                            )
                        )
                        continue
                    plan.append(
                        _PlannedRow(
                            f"torch {mode}, {tower}, batch {batch}",
                            tower,
                            batch,
                            lambda b, mode=mode, inputs=inputs, tower=tower, batch=batch: bench_torch(
                                loaded, tower, batch, inputs, mode=mode, threads=threads, budget_s=b
                            ),
                            base,
                        )
                    )
            for entry in entries:
                if entry.format == PREPROCESSING_FORMAT:
                    continue  # takes one decoded image, not pixel batches: benchmarks/preprocessing_graph.py times it
                for provider in providers:
                    if entry.format == TENSORRT_FORMAT and provider != providers[0]:
                        continue
                    base = BenchRow(
                        entry.path,
                        "artifact",
                        tower,
                        entry.precision,
                        TENSORRT_RUNTIME if entry.format == TENSORRT_FORMAT else provider_name(provider),
                        None,
                        batch,
                        "",
                        threads=threads,
                    )
                    plan.append(
                        _PlannedRow(
                            f"{entry.path} on {base.provider_requested}, batch {batch}",
                            tower,
                            batch,
                            lambda b, entry=entry, provider=provider, inputs=inputs, batch=batch, base=base: (
                                bench_entry(model_dir, entry, provider, batch, inputs, threads, b, base)
                            ),
                            base,
                        )
                    )
                if fused_baseline and entry.precision == "fp32" and entry.format == ONNX_FORMAT:
                    base = BenchRow(
                        f"{Path(entry.path).name} +ort-optimizer",
                        "baseline",
                        tower,
                        "fp32",
                        provider_name("cpu"),
                        None,
                        batch,
                        "",
                        threads=threads,
                    )
                    plan.append(
                        _PlannedRow(
                            f"{entry.path} with onnxruntime's transformer optimizer, batch {batch}",
                            tower,
                            batch,
                            lambda b, entry=entry, inputs=inputs, batch=batch, tower=tower: bench_fused(
                                model_dir / entry.path, tower, batch, inputs, threads, b
                            ),
                            base,
                        )
                    )
    return plan


def _run_plan(plan: Sequence[_PlannedRow], budget_s: float, deadline: float, progress: Progress) -> list[BenchRow]:
    """Run the rows in order; each gets at most an equal share of the time left, and rows past the
    deadline are listed as skipped. The progress line counts rows and estimates the time left."""
    rows: list[BenchRow] = []
    first = time.perf_counter()
    for index, planned in enumerate(plan):
        now = time.perf_counter()
        left = len(plan) - index
        if now >= deadline:
            rows.append(_skipped(planned.skipped, "the total time budget (--max-time) ran out before this row"))
            continue
        per_row = (now - first) / index if index else None
        estimate = min(per_row * left, deadline - now) if per_row is not None else None
        progress(
            f"[{index + 1}/{len(plan)}{f', ~{estimate:.0f} s left' if estimate is not None else ''}] {planned.description}"
        )
        rows.append(planned.measure(max(0.2, min(budget_s, (deadline - now) / left / 2))))
    return rows
