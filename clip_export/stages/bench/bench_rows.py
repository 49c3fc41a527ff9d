"""What one bench run measured: its rows, its result, and the machine it ran on."""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_export.core.environment import current_environment
from clip_export.core.spec import CPU_PROVIDER
from clip_export.stages.bench.preprocessing_study import PreprocessRow, StageTimes
from clip_export.stages.bench.timing import LatencyStats


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
    streamed_ceiling_share: float | None = None  # batch-1 fp32 and int8 CPU rows: share of their streamed-weights limit

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
    streamed_ceilings_gflops: dict[str, float] = field(default_factory=dict)  # fp32 weights, per tower
    breakdown: tuple[StageTimes, ...] = ()
    preprocessing: tuple[PreprocessRow, ...] = ()
    report_path: Path | None = None
    chart_path: Path | None = None
    peak_rss_mb: float = 0.0
    date: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    seconds: float = 0.0  # the whole run, against --max-time
    streamed_int8_ceilings_gops: dict[str, float] = field(default_factory=dict)  # 1-byte weights, per tower


def machine_info(threads: int) -> dict[str, Any]:
    """The CPU (and GPU) a run's figures belong to, with the flags that select its kernels."""
    env = current_environment(CPU_PROVIDER)
    info: dict[str, Any] = {
        "host": platform.node(),
        "cpu": env.cpu,
        "cpu_target": env.cpu_target,
        "tier": env.tier,
        "isa_flags": list(env.isa_flags),
        "cores": os.cpu_count(),
        "threads_used": threads,
        "python": platform.python_version(),
    }
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
