"""Timing primitives: warm-up discarded, a time budget per row, and interleaved rounds for ratios.

Timings on a shared 2-core machine drift; calls timed in interleaved rounds drift together, so
their ratios are what the benchmarks report.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from clip_export.core.environment import current_environment
from clip_export.core.errors import ClipExportError
from clip_export.core.spec import CPU_PROVIDER

Key = TypeVar("Key")


def refuse_emulated_cpu() -> None:
    """Timings under an emulator (qemu-x86_64 -cpu Haswell) are the emulator's speed, and would be
    filed under the emulated CPU's name: refused, where verify's fidelity figures are not."""
    here = current_environment(CPU_PROVIDER)
    if here.emulated:
        raise ClipExportError(
            f"bench times this process, which runs {here.describe()}: the figures would be the emulator's "
            "speed under the emulated CPU's name; run bench on the machine itself (verify may run emulated)"
        )


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


def time_calls(
    fn: Callable[[], Any], *, warmup: int = 3, budget_s: float = 2.0, min_runs: int = 10, max_runs: int = 1000
) -> LatencyStats:
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


def interleaved_samples(
    calls: Mapping[Key, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int = 0,
    budget_s: float = 0.0,
    order_seed: int | str | None = None,
) -> dict[Key, list[float]]:
    """Seconds of each call in every round after the first `warmup`, the calls run one after another
    in rounds until `warmup + rounds` rounds and `budget_s` seconds are both done: drift on a shared
    machine then hits every call alike, which makes their ratios trustworthy. With `order_seed` each
    round runs them in a new seeded random order: a call that always ran right after another gained
    or lost from it (the add_documents table, 2026-12-05, docs/benchmarks.md). Only if no call leaves
    threads spinning for the next: open sessions with stop_spinning_after_run and follow a torch call
    with an untimed pause (benchmarks/int8_tiers.py measured fp32 at 2x its own time otherwise)."""
    samples: dict[Key, list[float]] = {key: [] for key in calls}
    shuffle = None if order_seed is None else random.Random(order_seed).shuffle
    deadline = time.perf_counter() + budget_s
    done = 0
    while done < warmup + rounds or time.perf_counter() < deadline:
        keys = list(calls)
        if shuffle is not None:
            shuffle(keys)
        for key in keys:
            start = time.perf_counter()
            calls[key]()
            if done >= warmup:
                samples[key].append(time.perf_counter() - start)
        done += 1
    return samples


def time_interleaved(
    calls: Sequence[Callable[[], Any]], *, rounds: int, warmup: int = 0, budget_s: float = 0.0
) -> list[float]:
    """p50 ms of each call over interleaved rounds, in the order given (interleaved_samples)."""
    samples = interleaved_samples(dict(enumerate(calls)), rounds=rounds, warmup=warmup, budget_s=budget_s)
    return [float(np.median(samples[n])) * 1e3 for n in range(len(calls))]


def runs_for(batch: int) -> dict[str, int]:
    """time_calls' warm-up and minimum runs for a row. Batch-1 rows are the product (p99 matters);
    larger batches are throughput rows, where a few runs of a second each say enough and ten would
    take most of the run's time budget (the first run is timed apart as "first run ms")."""
    return {"warmup": 3, "min_runs": 10} if batch == 1 else {"warmup": 1, "min_runs": 3}
