"""One bench row: one artifact on one provider at one batch size, timed, with its ratios to torch and
to the machine's ceilings."""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.environment import current_environment
from clip_export.core.errors import ProviderUnavailableError
from clip_export.core.manifest import integrity_problems, resolve_inside
from clip_export.core.runner import NotRunnableHereError, open_graph, open_runner
from clip_export.core.sessions import SessionOptions, provider_name, provider_spec
from clip_export.core.spec import (
    CPU_PROVIDER,
    PRECISION_SPECS,
    PROVIDERS,
    TENSORRT_FORMAT,
    TENSORRT_RUNTIME,
    TOWERS,
    int8_family_of,
)
from clip_export.stages.bench.bench_rows import BenchRow, rss_mb
from clip_export.stages.bench.timing import LatencyStats, runs_for, time_calls


def inputs_for(tower: str, ref: dict[str, np.ndarray], batch: int) -> np.ndarray:
    source = ref[TOWERS[tower].input_name]
    reps = -(-batch // len(source))
    return np.ascontiguousarray(np.concatenate([source] * reps)[:batch])


def bench_onnx(
    path: Path,
    tower: str,
    precision: str,
    provider: str,
    batch: int,
    inputs: np.ndarray,
    *,
    threads: int,
    budget_s: float,
    name: str,
    kind: str = "artifact",
) -> BenchRow:
    """Latency of one ONNX artifact on one provider; an unavailable provider yields a row without numbers."""
    base = dict(
        name=name,
        kind=kind,
        tower=tower,
        precision=precision,
        provider_requested=provider_name(provider),
        batch=batch,
        threads=threads,
    )
    options = SessionOptions(
        provider=provider,
        intra_op_threads=threads,
        precision=precision,
        provider_options=_provider_options(provider, precision, path),
    )
    started = time.perf_counter()
    try:
        session = open_graph(path, options).session
    except ProviderUnavailableError as exc:
        return BenchRow(**base, provider_ran=None, status=f"unavailable: {exc}")
    create_ms = (time.perf_counter() - started) * 1000.0
    ran = session.get_providers()[0]
    input_name = TOWERS[tower].input_name
    started = time.perf_counter()
    session.run(None, {input_name: inputs})
    first_ms = (time.perf_counter() - started) * 1000.0
    copy_ms = None
    if provider_spec(ran).io_binding_device is None:
        stats = time_calls(lambda: session.run(None, {input_name: inputs}), budget_s=budget_s, **runs_for(batch))
    else:
        stats, end_to_end = _bench_device_resident(session, input_name, inputs, budget_s)
        copy_ms = end_to_end.p50_ms - stats.p50_ms
    rss = rss_mb()
    session = None  # release the weights before the next session is created
    gc.collect()
    return BenchRow(
        **base,
        provider_ran=ran,
        status="ok",
        latency=stats,
        throughput_per_s=batch / (stats.p50_ms / 1000.0),
        session_create_ms=create_ms,
        first_inference_ms=first_ms,
        copy_overhead_ms=copy_ms,
        rss_mb=rss,
    )


def _provider_options(provider: str, precision: str, path: Path) -> tuple[tuple[str, str], ...]:
    if provider_name(provider) == PROVIDERS["tensorrt"]:
        cache = Path(tempfile.gettempdir()) / "clip-export-trt-ep-cache"
        return (
            ("trt_engine_cache_enable", "True"),
            ("trt_engine_cache_path", str(cache)),
            ("trt_timing_cache_enable", "True"),
            ("trt_fp16_enable", "True" if precision == "fp16" else "False"),
        )
    return ()


def _bench_device_resident(
    session: Any, input_name: str, inputs: np.ndarray, budget_s: float
) -> tuple[LatencyStats, LatencyStats]:
    """GPU timing with IO binding (no copies), and end to end with numpy in/out for the copy cost."""
    from clip_export.core.sessions import ort

    rt = ort()
    binding = session.io_binding()
    device = provider_spec(session.get_providers()[0]).io_binding_device
    binding.bind_ortvalue_input(input_name, rt.OrtValue.ortvalue_from_numpy(inputs, device, 0))
    binding.bind_output(session.get_outputs()[0].name, device)

    def resident() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    device = time_calls(resident, budget_s=budget_s)
    end_to_end = time_calls(lambda: session.run(None, {input_name: inputs}), budget_s=budget_s / 2)
    return device, end_to_end


def bench_fused(path: Path, tower: str, batch: int, inputs: np.ndarray, threads: int, budget_s: float) -> BenchRow:
    from clip_export.core.graph_surgery import fuse_transformer_ops

    optimized, _ = fuse_transformer_ops(path)
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        optimized.save_model_to_file(str(fused))
        return bench_onnx(
            fused,
            tower,
            "fp32",
            "cpu",
            batch,
            inputs,
            threads=threads,
            budget_s=budget_s,
            name=f"{path.name} +ort-optimizer",
            kind="baseline",
        )


def with_ratios(
    row: BenchRow,
    torch_p50: float | None,
    flops: float | None,
    ceilings: dict[str, float],
    streamed: Mapping[str, float] | None = None,
) -> BenchRow:
    if row.latency is None:
        return row
    updates: dict[str, Any] = {}
    if torch_p50:
        updates["speedup_vs_torch"] = torch_p50 / row.latency.p50_ms
    if flops and row.provider_ran in (CPU_PROVIDER, "torch-cpu"):
        achieved = flops * row.batch / (row.latency.p50_ms / 1000.0) / 1e9
        updates["gflops_per_s"] = achieved
        spec = PRECISION_SPECS.get(row.precision)
        ceiling = ceilings[spec.gemm_ceiling if spec else "fp32"]
        updates["ceiling_share"] = achieved / ceiling
        limit = (streamed or {}).get(spec.streamed_limit) if spec and spec.streamed_limit else None
        if limit and row.batch == 1:
            updates["streamed_ceiling_share"] = achieved / limit
    return BenchRow(**{**row.__dict__, **updates})


def bench_entry(
    model_dir: Path,
    entry: ArtifactEntry,
    provider: str,
    batch: int,
    inputs: np.ndarray,
    threads: int,
    budget_s: float,
    base: BenchRow,
) -> BenchRow:
    """One manifest entry's row: an ONNX artifact on `provider`, or a TensorRT engine on TensorRT."""
    if entry.format == TENSORRT_FORMAT:
        return _bench_engine(model_dir, entry, batch, inputs, threads, budget_s)
    problems = integrity_problems(model_dir, entry)
    if problems:
        return dataclasses.replace(base, status=f"unavailable: {'; '.join(problems)}")
    family = int8_family_of(entry)
    here = current_environment(CPU_PROVIDER)
    if family is not None and base.provider_requested == CPU_PROVIDER and not family.applies_to(here.isa_flags):
        return dataclasses.replace(
            base,
            status=f"not applicable on this CPU ({here.tier}): the {family.name} INT8 family ({family.tiers}) "
            "needs one of "
            f"{', '.join(family.requires_any_flag)}; its results here would be wrong, so its speed says nothing",
        )
    return bench_onnx(
        resolve_inside(model_dir, entry.path, "the artifact"),
        entry.tower,
        entry.precision,
        provider,
        batch,
        inputs,
        threads=threads,
        budget_s=budget_s,
        name=entry.path,
    )


def _bench_engine(
    model_dir: Path, entry: ArtifactEntry, batch: int, inputs: np.ndarray, threads: int, budget_s: float
) -> BenchRow:
    base = dict(
        name=entry.path,
        kind="artifact",
        tower=entry.tower,
        precision=entry.precision,
        provider_requested=TENSORRT_RUNTIME,
        batch=batch,
        threads=threads,
    )
    try:
        runner = open_runner(model_dir, entry)
    except NotRunnableHereError as exc:
        return BenchRow(**base, provider_ran=None, status=f"unavailable: {exc}")
    stats = time_calls(lambda: runner.run(inputs), budget_s=budget_s, **runs_for(batch))
    return BenchRow(
        **base,
        provider_ran=f"{TENSORRT_RUNTIME} (includes host copies)",
        status="ok",
        latency=stats,
        throughput_per_s=batch / (stats.p50_ms / 1000.0),
    )
