"""bench's torch baselines, run in the same process as the artifacts: eager fp32 (the report's
load:cpu), bf16 autocast where the CPU has native bf16, cuda fp16 and torch.compile."""

from __future__ import annotations

import platform
import time
from typing import Any

import numpy as np

from clip_export.core.environment import current_environment
from clip_export.core.spec import CPU_PROVIDER
from clip_export.stages.bench.bench_rows import BenchRow, rss_mb
from clip_export.stages.bench.timing import runs_for, time_calls

# torch baselines and the precision each runs in.
TORCH_MODES = {"eager-fp32": "fp32", "bf16-autocast": "bf16", "cuda-fp16": "fp16", "compile": "fp32"}


def bench_torch(
    loaded: Any, tower: str, batch: int, inputs: np.ndarray, *, mode: str, threads: int, budget_s: float
) -> BenchRow:
    """torch baselines: eager fp32 (the report's load:cpu), bf16 autocast, cuda fp16, torch.compile."""
    import torch

    base = dict(
        name=f"torch {mode}", kind="baseline", tower=tower, precision=TORCH_MODES[mode], batch=batch, threads=threads
    )
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
    stats = time_calls(call, budget_s=budget_s, **runs_for(batch))
    return BenchRow(
        **base,
        provider_ran=f"torch-{device}",
        status="ok",
        latency=stats,
        throughput_per_s=batch / (stats.p50_ms / 1000.0),
        session_create_ms=create_ms,
        first_inference_ms=first_ms,
        rss_mb=rss_mb(),
    )


def native_bf16() -> bool:
    """torch's CPU bf16 autocast is native only with AVX-512 BF16 or AMX; elsewhere it is emulated
    and slower than fp32 (2.9 s against 1.95 s per ViT-B/32 image on a Zen 3), so it is no baseline."""
    flags = set(current_environment(CPU_PROVIDER).isa_flags)
    return bool(flags & {"avx512_bf16", "amx_bf16"}) or platform.machine() not in ("x86_64", "AMD64")
