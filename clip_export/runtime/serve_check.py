"""Check where you serve: each artifact against a slice of the stored reference, in this process.

A release verified on one CPU can be served from another whose kernels differ (INT8 on AVX2
without VNNI saturates where VNNI does not). Before ClipOnnx serves, each loaded artifact runs the
first SERVE_CHECK_ITEMS reference images or captions on the session it will serve with, and must
meet its precision's thresholds here; "auto" skips that where the manifest already holds a passing
verdict for these bytes in exactly this environment.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.environment import Environment, current_environment
from clip_export.core.errors import ClipExportError, ManifestError, ServeCheckError
from clip_export.core.manifest import passing_rows, require_intact
from clip_export.core.metrics import Metric, numeric_metrics
from clip_export.core.spec import SERVE_CHECK_ITEMS, SERVE_CHECK_MODES, THRESHOLDS, TOWERS, threshold_key


@dataclass(frozen=True)
class ServeCheck:
    path: str
    status: str  # "pass" | "skipped: why"
    environment: Environment
    metrics: tuple[Metric, ...] = ()
    seconds: float = 0.0


def require_mode(mode: str) -> str:
    if mode not in SERVE_CHECK_MODES:
        raise ClipExportError(
            f"the requested serve-time check was {mode!r}; choose from {', '.join(SERVE_CHECK_MODES)}"
        )
    return mode


def passing_verdict_here(manifest: dict[str, Any], entry: dict[str, Any], env: Environment) -> dict[str, Any] | None:
    """A passing verification row for exactly these bytes in exactly this environment, if any."""
    for row in passing_rows(manifest, entry):
        recorded = row.get("environment")
        if (
            isinstance(recorded, dict)
            and Environment.from_json(recorded, f"the verdict for {entry['path']}").key == env.key
        ):
            return row
    return None


def load_reference_slice(root: Path, manifest: dict[str, Any], towers: set[str]) -> dict[str, np.ndarray]:
    """The first SERVE_CHECK_ITEMS inputs and fp32 embeddings of each loaded tower, hash-checked."""
    record = manifest.get("reference")
    if not record:
        raise ManifestError(
            f"{root} carries no stored reference, so the serve-time check cannot run; re-release it with clip-export 0.1+ or pass check='off' to serve unchecked"
        )
    require_intact(root, record, "refusing the serve-time check's reference")
    wanted = [name for tower in sorted(towers) for name in (TOWERS[tower].input_name, TOWERS[tower].output_name)]
    sliced: dict[str, np.ndarray] = {}
    with np.load(root / record["path"]) as data:
        for name in wanted:
            if name not in data.files or len(data[name]) < SERVE_CHECK_ITEMS:
                found = len(data[name]) if name in data.files else 0
                raise ManifestError(
                    f"the stored reference {record['path']} holds {found} '{name}' rows; the serve-time check needs {SERVE_CHECK_ITEMS}"
                )
            sliced[name] = data[name][:SERVE_CHECK_ITEMS]
    return sliced


def check_here(
    manifest: dict[str, Any],
    entry: dict[str, Any],
    session: Any,
    reference: Callable[[], dict[str, np.ndarray]],
    mode: str,
) -> ServeCheck:
    """Run the reference slice (loaded on demand) through `session`; ServeCheckError names every metric it misses."""
    env = current_environment(session.get_providers()[0])
    if mode == "off":
        return ServeCheck(entry["path"], "skipped: turned off by the caller", env)
    if mode == "auto":
        row = passing_verdict_here(manifest, entry, env)
        if row is not None:
            return ServeCheck(
                entry["path"], f"skipped: verified in this environment on {row.get('date', 'an earlier run')}", env
            )
    started = time.perf_counter()
    tower, sliced = TOWERS[entry["tower"]], reference()
    got = session.run(None, {tower.input_name: sliced[tower.input_name]})[0]
    key = threshold_key(entry["precision"], entry["format"])
    metrics = tuple(numeric_metrics(sliced[tower.output_name], got, THRESHOLDS[key]))
    failures = [m.failure() for m in metrics if not m.passed]
    if failures:
        raise ServeCheckError(
            f"{entry['path']} misses its {key} thresholds on {SERVE_CHECK_ITEMS} reference items in this environment "
            f"({env.describe()}): {'; '.join(failures)}. "
            + ("Serve the fp32 artifact (precision='fp32'), or run" if entry["precision"] != "fp32" else "Run")
            + " 'clip-export verify' here for the full report"
        )
    return ServeCheck(entry["path"], "pass", env, metrics, time.perf_counter() - started)
