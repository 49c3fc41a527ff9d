"""Bench stage: latency of every artifact × provider × batch, next to torch baselines from the same run.

Timing discipline: warm-up runs are discarded, each row runs for a time budget (and at least a
minimum count), one onnxruntime session is alive at a time, thread counts are pinned and recorded,
and on CUDA the inputs and outputs stay on the device through IO binding, with the host↔device
copy cost measured separately.
"""
from __future__ import annotations

import gc
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .bench_report import render_chart, render_markdown
from .ceilings import count_tower, gemm_ceiling, streamed_gemm_ceiling
from .errors import ClipExportError, ProviderUnavailableError
from .export import versions
from .manifest import atomic_write_text, integrity_problems, now_iso, read_manifest, to_jsonable, write_manifest
from .preprocessing_study import PreprocessRow, StageTimes, preprocessing_variants, vectorise_breakdown
from .progress import Progress, silent
from .sessions import SessionOptions, create_session, provider_name
from .spec import PREPROCESSING_FORMAT, REFERENCE_NAME, TOWERS
from .timing import LatencyStats, time_calls


@dataclass(frozen=True)
class BenchRow:
    name: str
    kind: str  # artifact | baseline
    tower: str
    precision: str
    provider_requested: str
    provider_ran: str | None
    batch: int
    status: str  # ok | unavailable: reason
    latency: LatencyStats | None = None
    throughput_per_s: float | None = None
    session_create_ms: float | None = None
    first_inference_ms: float | None = None
    copy_overhead_ms: float | None = None
    rss_mb: float | None = None
    threads: int | None = None
    speedup_vs_torch: float | None = None
    gflops_per_s: float | None = None
    ceiling_share: float | None = None
    streamed_ceiling_share: float | None = None  # batch-1 fp32 CPU rows: share of the streamed-weights limit

    @property
    def p50_ms(self) -> float | None:
        return self.latency.p50_ms if self.latency else None


@dataclass(frozen=True)
class BenchResult:
    model_dir: Path
    rows: tuple[BenchRow, ...]
    machine: dict[str, Any]
    versions: dict[str, str]
    ceilings_gflops: dict[str, float]
    flops_per_item: dict[str, float]
    streamed_ceilings_gflops: dict[str, float] = field(default_factory=dict)
    breakdown: tuple[StageTimes, ...] = ()
    preprocessing: tuple[PreprocessRow, ...] = ()
    report_path: Path | None = None
    chart_path: Path | None = None
    peak_rss_mb: float = 0.0
    date: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        flags = next((l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")), "")
    except OSError:
        pass
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads_used": threads,
        "avx512": "avx512f" in flags,
        "vnni": "avx512_vnni" in flags or "avx_vnni" in flags,
        "amx": "amx_tile" in flags,
        "python": platform.python_version(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---- one row ------------------------------------------------------------------------------


def _inputs_for(tower: str, ref: dict[str, np.ndarray], batch: int) -> np.ndarray:
    source = ref["pixel_values"] if tower == "visual" else ref["input_ids"]
    reps = -(-batch // len(source))
    return np.ascontiguousarray(np.concatenate([source] * reps)[:batch])


def bench_onnx(path: Path, tower: str, precision: str, provider: str, batch: int, inputs: np.ndarray, *, threads: int, budget_s: float, name: str, kind: str = "artifact") -> BenchRow:
    """Latency of one ONNX artifact on one provider; an unavailable provider yields a row without numbers."""
    base = dict(name=name, kind=kind, tower=tower, precision=precision, provider_requested=provider_name(provider), batch=batch, threads=threads)
    options = SessionOptions(provider=provider, intra_op_threads=threads, precision=precision, provider_options=_provider_options(provider, precision, path))
    started = time.perf_counter()
    try:
        session = create_session(path, options)
    except ProviderUnavailableError as exc:
        return BenchRow(**base, provider_ran=None, status=f"unavailable: {exc}")
    create_ms = (time.perf_counter() - started) * 1000.0
    ran = session.get_providers()[0]
    input_name = TOWERS[tower].input_name
    started = time.perf_counter()
    session.run(None, {input_name: inputs})
    first_ms = (time.perf_counter() - started) * 1000.0
    copy_ms = None
    if ran == "CPUExecutionProvider":
        stats = time_calls(lambda: session.run(None, {input_name: inputs}), budget_s=budget_s)
    else:
        stats, end_to_end = _bench_device_resident(session, input_name, inputs, budget_s)
        copy_ms = end_to_end.p50_ms - stats.p50_ms
    rss = _rss_mb()
    session = None  # release the weights before the next session is created
    gc.collect()
    return BenchRow(**base, provider_ran=ran, status="ok", latency=stats, throughput_per_s=batch / (stats.p50_ms / 1000.0), session_create_ms=create_ms, first_inference_ms=first_ms, copy_overhead_ms=copy_ms, rss_mb=rss)


def _provider_options(provider: str, precision: str, path: Path) -> tuple[tuple[str, str], ...]:
    if provider_name(provider) == "TensorrtExecutionProvider":
        cache = Path(tempfile.gettempdir()) / "clip-export-trt-ep-cache"
        return (("trt_engine_cache_enable", "True"), ("trt_engine_cache_path", str(cache)), ("trt_timing_cache_enable", "True"), ("trt_fp16_enable", "True" if precision == "fp16" else "False"))
    return ()


def _bench_device_resident(session: Any, input_name: str, inputs: np.ndarray, budget_s: float) -> tuple[LatencyStats, LatencyStats]:
    """GPU timing with IO binding (no copies), and end to end with numpy in/out for the copy cost."""
    from .sessions import ort

    rt = ort()
    binding = session.io_binding()
    binding.bind_ortvalue_input(input_name, rt.OrtValue.ortvalue_from_numpy(inputs, "cuda", 0))
    binding.bind_output(session.get_outputs()[0].name, "cuda")

    def resident() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    device = time_calls(resident, budget_s=budget_s)
    end_to_end = time_calls(lambda: session.run(None, {input_name: inputs}), budget_s=budget_s / 2)
    return device, end_to_end


def bench_torch(loaded: Any, tower: str, batch: int, inputs: np.ndarray, *, mode: str, threads: int, budget_s: float) -> BenchRow:
    """torch baselines: eager fp32 (the report's load:cpu), bf16 autocast, cuda fp16, torch.compile."""
    import torch

    base = dict(name=f"torch {mode}", kind="baseline", tower=tower, precision={"eager-fp32": "fp32", "bf16-autocast": "bf16", "cuda-fp16": "fp16", "compile": "fp32"}[mode], batch=batch, threads=threads)
    device = "cuda" if mode == "cuda-fp16" else "cpu"
    base["provider_requested"] = f"torch-{device}"
    if device == "cuda" and not torch.cuda.is_available():
        return BenchRow(**base, provider_ran=None, status="unavailable: torch sees no CUDA device")
    torch.set_num_threads(threads)
    model = loaded.model
    encode = model.encode_image if tower == "visual" else model.encode_text
    x = torch.from_numpy(inputs)
    started = time.perf_counter()
    if mode == "cuda-fp16":
        import copy

        gpu_model = copy.deepcopy(model).half().cuda().eval()
        encode = gpu_model.encode_image if tower == "visual" else gpu_model.encode_text
        x = x.cuda().half() if tower == "visual" else x.cuda()
    elif mode == "compile":
        encode = torch.compile(encode)
    create_ms = (time.perf_counter() - started) * 1000.0

    def call() -> None:
        with torch.no_grad():
            if mode == "bf16-autocast":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    encode(x)
            else:
                encode(x)
            if device == "cuda":
                torch.cuda.synchronize()

    started = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - started) * 1000.0
    stats = time_calls(call, budget_s=budget_s)
    return BenchRow(**base, provider_ran=f"torch-{device}", status="ok", latency=stats, throughput_per_s=batch / (stats.p50_ms / 1000.0), session_create_ms=create_ms, first_inference_ms=first_ms, rss_mb=_rss_mb())


# ---- the stage ----------------------------------------------------------------------------


def bench(
    model_dir: Path,
    *,
    providers: Sequence[str] = ("cpu",),
    batch_sizes: Sequence[int] = (1, 8, 32),
    towers: Sequence[str] = ("visual", "text"),
    threads: int | None = None,
    budget_s: float = 2.0,
    baselines: bool = True,
    compile_baseline: bool = False,
    fused_baseline: bool = False,
    breakdown: bool = True,
    precisions: Sequence[str] | None = None,
    write: bool = True,
    chart: bool = True,
    progress: Progress = silent,
) -> BenchResult:
    """Measure every artifact in DIR's manifest, plus torch baselines, in one process."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    threads = threads or os.cpu_count() or 1
    if any(b < 1 for b in batch_sizes):
        raise ClipExportError(f"batch sizes must be >= 1, got {', '.join(map(str, batch_sizes))}")
    for p in providers:
        provider_name(p)
    with np.load(model_dir / REFERENCE_NAME) as data:
        ref = {k: data[k] for k in data.files}
    loaded = None
    notes: list[str] = []
    flops: dict[str, float] = {}
    products: dict[str, tuple[tuple[int, int, int], ...]] = {}
    if baselines or fused_baseline:
        try:
            from .models import load_model, spec_from_manifest

            progress("loading the torch model for the baselines")
            loaded = load_model(spec_from_manifest(manifest["model"]))
            for tower in towers:
                flops[tower], products[tower] = count_tower(loaded, tower)
        except ImportError as exc:
            notes.append(f"torch baselines skipped: {exc}")
    progress("measuring the GEMM ceiling (fp32, int8) through onnxruntime")
    ceilings = {"fp32": gemm_ceiling(threads), "int8": gemm_ceiling(threads, int8=True)}
    streamed: dict[str, float] = {}
    if 1 in batch_sizes:
        for tower, shapes in products.items():
            # A tower whose products are a minor share of its FLOPs (a ResNet) has no such limit.
            if shapes and sum(2.0 * m * k * n for m, k, n in shapes) >= 0.5 * flops[tower]:
                progress(f"measuring the streamed-weights GEMM limit of the {tower} tower at batch 1")
                streamed[tower] = streamed_gemm_ceiling(shapes, threads, budget_s=min(1.0, budget_s)) or 0.0
    rows: list[BenchRow] = []
    for tower in towers:
        entries = [a for a in manifest["artifacts"] if a["tower"] == tower and (precisions is None or a["precision"] in precisions)]
        for batch in batch_sizes:
            inputs = _inputs_for(tower, ref, batch)
            torch_p50 = None
            if loaded is not None and baselines:
                progress(f"torch eager fp32, {tower}, batch {batch}")
                eager = bench_torch(loaded, tower, batch, inputs, mode="eager-fp32", threads=threads, budget_s=budget_s)
                torch_p50 = eager.p50_ms
                rows.append(eager)
                modes = ["bf16-autocast"] + (["cuda-fp16"] if any(provider_name(p) != "CPUExecutionProvider" for p in providers) else []) + (["compile"] if compile_baseline else [])
                for mode in modes:
                    progress(f"torch {mode}, {tower}, batch {batch}")
                    rows.append(bench_torch(loaded, tower, batch, inputs, mode=mode, threads=threads, budget_s=budget_s))
            for entry in entries:
                if entry["format"] == PREPROCESSING_FORMAT:
                    continue  # takes one decoded image, not pixel batches: benchmarks/preprocessing_graph.py times it
                for provider in providers:
                    if entry["format"] == "tensorrt":
                        if provider != providers[0]:
                            continue
                        rows.append(_bench_plan(model_dir, entry, batch, inputs, threads, budget_s))
                        continue
                    problems = integrity_problems(model_dir, entry)
                    if problems:
                        rows.append(BenchRow(entry["path"], "artifact", tower, entry["precision"], provider_name(provider), None, batch, f"unavailable: {'; '.join(problems)}"))
                        continue
                    progress(f"{entry['path']} on {provider_name(provider)}, batch {batch}")
                    rows.append(bench_onnx(model_dir / entry["path"], tower, entry["precision"], provider, batch, inputs, threads=threads, budget_s=budget_s, name=entry["path"]))
                if fused_baseline and entry["precision"] == "fp32" and entry["format"] == "onnx":
                    rows.append(_bench_fused(model_dir / entry["path"], tower, batch, inputs, threads, budget_s, progress))
            rows[:] = [_with_ratios(r, torch_p50, flops.get(tower), ceilings, streamed.get(tower)) if r.tower == tower and r.batch == batch else r for r in rows]
    breakdown_rows: list[StageTimes] = []
    variant_rows: list[PreprocessRow] = []
    if breakdown and "visual" in towers:
        progress("vectorise() breakdown for one PNG and one JPEG")
        breakdown_rows = vectorise_breakdown(model_dir, manifest, threads, loaded)
        progress("preprocessing variants: time and fidelity against the reference pipeline")
        variant_rows = preprocessing_variants(model_dir, manifest, threads)
    result = BenchResult(model_dir, tuple(rows), machine_info(threads), versions(), ceilings, flops, streamed, tuple(breakdown_rows), tuple(variant_rows), peak_rss_mb=peak_rss_mb(), date=now_iso(), notes=tuple(notes))
    if write:
        chart_path = render_chart(result, model_dir / "bench-batch1.png") if chart else None
        result = BenchResult(**{**result.__dict__, "chart_path": chart_path})
        report_path = model_dir / "BENCH.md"
        atomic_write_text(report_path, render_markdown(result))
        result = BenchResult(**{**result.__dict__, "report_path": report_path})
        manifest = read_manifest(model_dir)
        manifest["benchmark"] = {k: v for k, v in to_jsonable(result).items() if k != "model_dir"}
        write_manifest(model_dir, manifest)
    return result


def _bench_plan(model_dir: Path, entry: dict[str, Any], batch: int, inputs: np.ndarray, threads: int, budget_s: float) -> BenchRow:
    from . import tensorrt as trt_stage

    base = dict(name=entry["path"], kind="artifact", tower=entry["tower"], precision=entry["precision"], provider_requested="tensorrt-runtime", batch=batch, threads=threads)
    runnable, why = trt_stage.runnable_here(entry)
    if not runnable:
        return BenchRow(**base, provider_ran=None, status=f"unavailable: {why}")
    stats = time_calls(lambda: trt_stage.run_engine(model_dir / entry["path"], inputs, batch=batch), budget_s=budget_s)
    return BenchRow(**base, provider_ran="tensorrt-runtime (includes host copies)", status="ok", latency=stats, throughput_per_s=batch / (stats.p50_ms / 1000.0))


def _bench_fused(path: Path, tower: str, batch: int, inputs: np.ndarray, threads: int, budget_s: float, progress: Progress) -> BenchRow:
    from .convert import fuse_transformer_ops

    progress(f"{path.name} with onnxruntime's transformer optimizer, batch {batch}")
    optimized, _ = fuse_transformer_ops(path)
    with tempfile.TemporaryDirectory() as tmp:
        fused = Path(tmp) / "fused.onnx"
        optimized.save_model_to_file(str(fused))
        return bench_onnx(fused, tower, "fp32", "cpu", batch, inputs, threads=threads, budget_s=budget_s, name=f"{path.name} +ort-optimizer", kind="baseline")


def _with_ratios(row: BenchRow, torch_p50: float | None, flops: float | None, ceilings: dict[str, float], streamed: float | None = None) -> BenchRow:
    if row.latency is None:
        return row
    updates: dict[str, Any] = {}
    if torch_p50:
        updates["speedup_vs_torch"] = torch_p50 / row.latency.p50_ms
    if flops and row.provider_ran in ("CPUExecutionProvider", "torch-cpu"):
        achieved = flops * row.batch / (row.latency.p50_ms / 1000.0) / 1e9
        updates["gflops_per_s"] = achieved
        ceiling = ceilings["int8"] if row.precision == "int8" else ceilings["fp32"]
        updates["ceiling_share"] = achieved / ceiling
        if streamed and row.batch == 1 and row.precision == "fp32":
            updates["streamed_ceiling_share"] = achieved / streamed
    return BenchRow(**{**row.__dict__, **updates})


