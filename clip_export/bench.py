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
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ClipExportError, ProviderUnavailableError
from .export import REFERENCE_NAME, example_input, versions
from .manifest import atomic_write_text, integrity_problems, now_iso, read_manifest, to_jsonable, write_manifest
from .progress import Progress, silent
from .sessions import SessionOptions, create_session, provider_name
from .spec import TOWERS


@dataclass(frozen=True)
class LatencyStats:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    runs: int
    warmup_discarded: int


def latency_stats(samples_s: Sequence[float], warmup: int) -> LatencyStats:
    """Percentiles in ms over the samples after the first `warmup` ones."""
    kept = np.asarray(samples_s[warmup:], dtype=np.float64) * 1000.0
    if kept.size == 0:
        raise ValueError(f"no samples left after discarding {warmup} warm-up runs")
    p50, p90, p99 = np.percentile(kept, [50, 90, 99])
    return LatencyStats(float(p50), float(p90), float(p99), float(kept.mean()), int(kept.size), warmup)


def time_calls(fn: Callable[[], Any], *, warmup: int = 3, budget_s: float = 2.0, min_runs: int = 10, max_runs: int = 1000) -> LatencyStats:
    samples: list[float] = []
    deadline = None
    while len(samples) < max_runs:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        if len(samples) == warmup:
            deadline = time.perf_counter() + budget_s
        if deadline is not None and len(samples) >= warmup + min_runs and time.perf_counter() >= deadline:
            break
    return latency_stats(samples, warmup)


def time_interleaved(calls: Sequence[Callable[[], Any]], *, rounds: int, warmup: int = 0, budget_s: float = 0.0) -> list[float]:
    """p50 ms of each call, the calls run one after another in rounds (the first `warmup` rounds
    dropped) until `warmup + rounds` rounds and `budget_s` seconds are both done: drift on a shared
    machine then hits every call alike, which makes their ratios trustworthy."""
    samples: list[list[float]] = [[] for _ in calls]
    deadline = time.perf_counter() + budget_s
    done = 0
    while done < warmup + rounds or time.perf_counter() < deadline:
        for call, times in zip(calls, samples):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        done += 1
    return [float(np.median(times[warmup:])) * 1e3 for times in samples]


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
class StageTimes:
    image: str
    size: str
    load_ms: float
    preprocess_ms: float
    inference_ms: float
    to_numpy_ms: float
    engine: str

    @property
    def total_ms(self) -> float:
        return self.load_ms + self.preprocess_ms + self.inference_ms + self.to_numpy_ms


@dataclass(frozen=True)
class PreprocessRow:
    variant: str
    png_ms: float
    jpeg_ms: float
    pixel_max_abs: float
    embed_mean_abs_normalized: float | None
    image2image_top1: float | None
    within_fp32_tolerance: bool | None


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


# ---- the physical limit -------------------------------------------------------------------


def _matmul_model(m: int, k: int, n: int, int8: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "gemm", [helper.make_tensor_value_info("a", a_type, [m, k])], [helper.make_tensor_value_info("y", y_type, [m, n])], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _cpu_session(model: bytes, threads: int) -> Any:
    from .sessions import ort

    rt = ort()
    so = rt.SessionOptions()
    so.intra_op_num_threads = threads
    return rt.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _p50_gflops(session: Any, a: np.ndarray, flops: float, budget_s: float) -> float:
    """G(FL)OP/s of a one-input limit model ("a"), from its p50 latency."""
    stats = time_calls(lambda: session.run(None, {"a": a}), warmup=2, budget_s=budget_s, min_runs=5)
    return flops / (stats.p50_ms / 1000.0) / 1e9


def gemm_ceiling(threads: int, int8: bool = False, size: tuple[int, int, int] = (512, 2048, 2048), budget_s: float = 1.5) -> float:
    """GFLOP/s (GOP/s for int8) of one large MatMul through onnxruntime's CPU provider."""
    m, k, n = size
    a = np.random.default_rng(1).integers(0, 255, (m, k), dtype=np.uint8) if int8 else np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    return _p50_gflops(_cpu_session(_matmul_model(m, k, n, int8), threads), a, 2.0 * m * k * n, budget_s)


def count_tower(loaded: Any, tower: str) -> tuple[float, tuple[tuple[int, int, int], ...]]:
    """FLOPs of one item through the tower (torch's FlopCounterMode), and the (M, K, N) of every
    matrix product against a weight, in forward order."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten

    class WeightProducts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, int, int]] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in (aten.mm.default, aten.addmm.default):
                a, b = args[-2], args[-1]
                self.shapes.append((int(a.shape[0]), int(a.shape[1]), int(b.shape[1])))
            return func(*args, **(kwargs or {}))

    x = torch.from_numpy(example_input(loaded, tower, 1))
    encode = loaded.model.encode_image if tower == "visual" else loaded.model.encode_text
    # The fused multi-head-attention fast path is one opaque kernel the counter does not see;
    # the slow path runs the same projections as countable matmuls.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, WeightProducts() as products:
            encode(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops()), tuple(products.shapes)


def _streamed_chain_model(shapes: Sequence[tuple[int, int, int]], min_weight_bytes: int, max_nodes: int) -> tuple[bytes, int, int, float]:
    """The tower's weight products as one chain, each with its own random weight, repeated until
    the weights outgrow any cache. Slice/Pad adapt one product's width to the next one's depth."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    flops, weight_bytes = 0.0, 0
    first_m, first_k = shapes[0][0], shapes[0][1]
    per_token = [shape for shape in shapes if shape[0] == first_m]  # not the pooled one-row head
    current, width = "a", first_k
    index = 0
    while index == 0 or (weight_bytes < min_weight_bytes and index < max_nodes):
        m, k, n = per_token[index % len(per_token)]
        if width > k:
            nodes.append(helper.make_node("Slice", [current, "zero", f"k{index}", "last"], [f"in{index}"]))
            weights.append(numpy_helper.from_array(np.asarray([k], np.int64), f"k{index}"))
            current = f"in{index}"
        elif width < k:
            nodes.append(helper.make_node("Pad", [current, f"pad{index}"], [f"in{index}"]))
            weights.append(numpy_helper.from_array(np.asarray([0, 0, 0, k - width], np.int64), f"pad{index}"))
            current = f"in{index}"
        weights.append(numpy_helper.from_array((rng.standard_normal((k, n), dtype=np.float32) * k**-0.5), f"w{index}"))
        nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"y{index}"]))
        current, width = f"y{index}", n
        flops += 2.0 * m * k * n
        weight_bytes += 4 * k * n
        index += 1
    weights += [numpy_helper.from_array(np.asarray([0], np.int64), "zero"), numpy_helper.from_array(np.asarray([1], np.int64), "last")]
    graph = helper.make_graph(nodes, "streamed", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [first_m, first_k])], [helper.make_tensor_value_info(current, TensorProto.FLOAT, None)], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(), first_m, first_k, flops


def streamed_gemm_ceiling(shapes: Sequence[tuple[int, int, int]], threads: int, *, min_weight_bytes: int = 256 * 2**20, max_nodes: int = 400, budget_s: float = 1.0) -> float | None:
    """GFLOP/s of the tower's own weight products at batch 1 through onnxruntime, each weight read
    from memory as a one-document run must: the limit when weights, not arithmetic, are the cost."""
    if not shapes:
        return None
    model, m, k, flops = _streamed_chain_model(shapes, min_weight_bytes, max_nodes)
    session = _cpu_session(model, threads)
    del model  # 256 MB of serialized weights the session has already copied
    return _p50_gflops(session, np.random.default_rng(1).standard_normal((m, k)).astype(np.float32), flops, budget_s)


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


# ---- vectorise() breakdown and preprocessing variants --------------------------------------


def _median_ms(fn: Callable[[], Any], runs: int = 15) -> float:
    return time_calls(fn, warmup=2, budget_s=0.5, min_runs=runs, max_runs=runs + 2).p50_ms


def report_images(evalset_dir: Path | None = None) -> list[Path]:
    """The report's two image kinds from the bundled set: a wide RGBA PNG and a small JPEG."""
    from .evalset import BUNDLED_DIR

    images = (evalset_dir or BUNDLED_DIR / "images")
    return [images / "coffee-and-cat-wide-alpha.png", images / "rocket-small.jpg"]


def vectorise_breakdown(model_dir: Path, manifest: dict[str, Any], threads: int, loaded: Any | None) -> list[StageTimes]:
    from PIL import Image

    from .models import PreprocessConfig
    from .preprocess import load_image, preprocess_fast, preprocess_reference

    config = PreprocessConfig.from_json(manifest["preprocess"])
    visual = next((a for a in manifest["artifacts"] if a["tower"] == "visual" and a["precision"] == "fp32" and a["format"] == "onnx"), None)
    if visual is None:
        return []
    session = create_session(model_dir / visual["path"], SessionOptions(intra_op_threads=threads))
    rows = []
    for path in report_images():
        def load() -> Image.Image:
            return load_image(path)

        image = load()
        pixels = preprocess_reference(image, config)[None]
        rows.append(StageTimes(path.name, f"{image.width}x{image.height} {image.mode}", _median_ms(load), _median_ms(lambda: preprocess_reference(image, config)), _median_ms(lambda: session.run(None, {"pixel_values": pixels})), 0.0, "onnxruntime fp32 CPU (output is already numpy)"))
        fast_ms = _median_ms(lambda: preprocess_fast(image, config))
        rows.append(StageTimes(path.name, rows[-1].size, rows[-1].load_ms, fast_ms, rows[-1].inference_ms, 0.0, "onnxruntime fp32 CPU, ClipOnnx's default preprocessing (vectorised crop-resize)"))
        if loaded is not None:
            import torch

            x = torch.from_numpy(pixels)
            with torch.no_grad():
                out = loaded.model.encode_image(x)
                infer = _median_ms(lambda: loaded.model.encode_image(x))
            rows.append(StageTimes(path.name, rows[-1].size, rows[-1].load_ms, rows[-2].preprocess_ms, infer, _median_ms(lambda: out.numpy(), runs=50), "torch eager fp32 CPU"))
    session = None  # release the weights before the next session is created
    return rows


def preprocessing_variants(model_dir: Path, manifest: dict[str, Any], threads: int) -> list[PreprocessRow]:
    """Time and fidelity of each preprocessing variant against the reference PIL pipeline."""
    from PIL import Image

    from .evalset import load_evalset
    from .export import l2_normalize
    from .models import PreprocessConfig
    from .preprocess import VARIANTS, preprocess_reference
    from .verify import retrieval_agreement, run_batches

    config = PreprocessConfig.from_json(manifest["preprocess"])
    evalset = load_evalset()
    visual = next((a for a in manifest["artifacts"] if a["tower"] == "visual" and a["precision"] == "fp32" and a["format"] == "onnx"), None)
    session = create_session(model_dir / visual["path"], SessionOptions(intra_op_threads=threads)) if visual else None

    def opened(path: Path) -> Image.Image:
        handle = Image.open(path)  # keep it lazy: draft() must act before decoding
        return handle

    reference_pixels = np.stack([preprocess_reference(opened(p), config) for p in evalset.image_paths])
    reference_embeds = run_batches(session, "pixel_values", reference_pixels) if session else None
    png, jpeg = report_images()
    rows = []
    variants: dict[str, Callable[..., np.ndarray]] = {"open_clip torchvision (reference)": _torchvision_transform(config), **VARIANTS}
    for name, fn in variants.items():
        if fn is None:
            continue
        try:
            png_ms = _median_ms(lambda: fn(opened(png), config), runs=8)
            jpeg_ms = _median_ms(lambda: fn(opened(jpeg), config), runs=15)
            pixels = np.stack([fn(opened(p), config) for p in evalset.image_paths]).astype(np.float32)
        except ImportError as exc:
            rows.append(PreprocessRow(f"{name} (unavailable: {exc.name} not installed)", float("nan"), float("nan"), float("nan"), None, None, None))
            continue
        pixel_delta = float(np.abs(pixels - reference_pixels).max())
        embed_delta = top1 = None
        within = None
        if session is not None and reference_embeds is not None:
            embeds = run_batches(session, "pixel_values", pixels)
            embed_delta = float(np.abs(l2_normalize(embeds) - l2_normalize(reference_embeds)).mean())
            top1 = retrieval_agreement(reference_embeds, reference_embeds, embeds, embeds, exclude_self=True).top1_agreement
            from .spec import THRESHOLDS

            within = embed_delta <= THRESHOLDS["fp32"].mean_abs_normalized
        rows.append(PreprocessRow(name, png_ms, jpeg_ms, pixel_delta, embed_delta, top1, within))
    return rows


def _torchvision_transform(config: Any) -> Callable[..., np.ndarray] | None:
    try:
        import open_clip
    except ImportError:
        return None
    transform = open_clip.image_transform(config.image_size, is_train=False, mean=config.mean, std=config.std, resize_mode=config.resize_mode, interpolation=config.interpolation)
    return lambda image, _config: transform(image).numpy()


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


# ---- rendering ----------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None or value != value:
        return "-"
    return f"{value:.{digits}f}"


def render_markdown(result: BenchResult) -> str:
    m = result.machine
    lines = [
        f"# Benchmark of {result.model_dir.name}",
        "",
        f"Measured {result.date} on {m['cpu']} ({m['cores']} cores, {m['threads_used']} threads pinned{', GPU ' + m['gpu'] if m.get('gpu') else ''}).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result.versions.items())}.",
        f"GEMM ceiling through onnxruntime on this machine, same run: fp32 {result.ceilings_gflops['fp32']:.0f} GFLOP/s, int8 {result.ceilings_gflops['int8']:.0f} GOP/s.",
        "FLOPs per item (torch FlopCounterMode): " + ", ".join(f"{k} {v / 1e9:.2f} GFLOP" for k, v in result.flops_per_item.items()) + ".",
    ]
    if result.streamed_ceilings_gflops:
        lines.append(
            "Streamed-weights limit at batch 1 (the tower's own weight products, each weight read from memory once per item, as one document at a time must): "
            + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in result.streamed_ceilings_gflops.items())
            + "; \"% of streamed\" compares fp32 batch-1 rows with it."
        )
    lines += [
        "",
        "| tower | batch | name | precision | provider ran | p50 ms | p90 ms | p99 ms | items/s | × torch eager | GFLOP/s | % of ceiling | % of streamed | session ms | first run ms | copies ms | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lat = r.latency
        lines.append(
            f"| {r.tower} | {r.batch} | {r.name} | {r.precision} | {r.provider_ran or r.provider_requested + ' (did not run)'} | "
            f"{_fmt(lat.p50_ms if lat else None)} | {_fmt(lat.p90_ms if lat else None)} | {_fmt(lat.p99_ms if lat else None)} | {_fmt(r.throughput_per_s, 1)} | "
            f"{_fmt(r.speedup_vs_torch)} | {_fmt(r.gflops_per_s, 0)} | {_fmt(r.ceiling_share * 100 if r.ceiling_share else None, 0)} | {_fmt(r.streamed_ceiling_share * 100 if r.streamed_ceiling_share else None, 0)} | "
            f"{_fmt(r.session_create_ms, 0)} | {_fmt(r.first_inference_ms, 1)} | {_fmt(r.copy_overhead_ms)} | {r.status} |"
        )
    if result.breakdown:
        lines += ["", "## vectorise() for one image", "", "| image | size | engine | load ms | preprocess ms | inference ms | to numpy ms | total ms |", "|---|---|---|---|---|---|---|---|"]
        for s in result.breakdown:
            lines.append(f"| {s.image} | {s.size} | {s.engine} | {_fmt(s.load_ms)} | {_fmt(s.preprocess_ms)} | {_fmt(s.inference_ms)} | {_fmt(s.to_numpy_ms, 3)} | {_fmt(s.total_ms)} |")
    if result.preprocessing:
        lines += ["", "## Preprocessing variants", "", "| variant | PNG 2162×762 RGBA ms | JPEG 640×427 ms | max pixel |Δ| | embedding mean |Δ| (norm.) | image→image top-1 | within fp32 tolerance |", "|---|---|---|---|---|---|---|"]
        for p in result.preprocessing:
            lines.append(f"| {p.variant} | {_fmt(p.png_ms)} | {_fmt(p.jpeg_ms)} | {_fmt(p.pixel_max_abs, 4)} | {'-' if p.embed_mean_abs_normalized is None else f'{p.embed_mean_abs_normalized:.2e}'} | {_fmt(p.image2image_top1, 3)} | {'-' if p.within_fp32_tolerance is None else ('yes' if p.within_fp32_tolerance else 'no')} |")
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
    fig, axes = plt.subplots(1, len(towers), figsize=(6 * len(towers), 0.5 * max(len([r for r in rows if r.tower == t]) for t in towers) + 1.8), squeeze=False)
    for axis, tower in zip(axes[0], towers):
        subset = [r for r in rows if r.tower == tower]
        labels = [f"{r.name}\n{(r.provider_ran or '').replace('ExecutionProvider', '')}" for r in subset]
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
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
