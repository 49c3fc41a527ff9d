"""Check where you serve: each artifact against a slice of the stored reference, in this process.

A release verified on one CPU can be served from another whose kernels differ (INT8 on AVX2
without VNNI saturates where VNNI does not). Before ClipOnnx serves, each loaded artifact runs the
first SERVE_CHECK_ITEMS reference images or captions on the session it will serve with, and must
meet its precision's thresholds here; "auto" skips that where the manifest already holds a passing
verdict for these bytes in exactly this environment.

The check runs the serving path, not stored tensors: the reference photographs are decoded and
preprocessed, and the reference captions tokenized, by the very functions ClipOnnx will serve
with, so a wrong preprocessing or tokenizer setting fails at load. The stored tensors are used only
where the reference was computed on images that are not bundled (the status says so).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import ArtifactEntry, Manifest, VerificationRow
from clip_export.core.environment import Environment, current_environment
from clip_export.core.errors import ClipExportError, ManifestError, ServeCheckError
from clip_export.core.manifest import intact_reference, passing_rows, settings_digest
from clip_export.core.metrics import Metric, numeric_metrics
from clip_export.core.spec import (
    CPU_PROVIDER,
    SERVE_CHECK_ITEMS,
    SERVE_CHECK_MODES,
    THRESHOLDS,
    TOWERS,
    int8_family_of,
    threshold_key,
)


@dataclass(frozen=True)
class ServeCheck:
    path: str
    status: str  # "pass" | "skipped: why"
    environment: Environment
    metrics: tuple[Metric, ...] = ()
    seconds: float = 0.0
    inputs: str = ""  # what the check's inputs were made from: the serving path, or stored tensors
    covers: str = ""  # what a pass is about besides the environment (serving_coverage); "" for a skip

    @property
    def passed_here(self) -> dict[str, str]:
        """{what it covers: environment key} when this check ran and passed: what another process of the
        same job (an `embed --ray` actor) may take instead of running it again (check_here's `passed`)."""
        return {self.covers: self.environment.key} if self.status == "pass" and self.covers else {}


def require_mode(mode: str) -> str:
    if mode not in SERVE_CHECK_MODES:
        raise ClipExportError(
            f"the requested serve-time check was {mode!r}; choose from {', '.join(SERVE_CHECK_MODES)}"
        )
    return mode


def passing_verdict_here(manifest: Manifest, entry: ArtifactEntry, env: Environment) -> VerificationRow | None:
    """A passing verification row for exactly these bytes in exactly this environment, if any."""
    for row in passing_rows(manifest, entry):
        recorded = row.environment
        if recorded is not None and Environment.from_json(recorded, f"the verdict for {entry.path}").key == env.key:
            return row
    return None


def load_reference_slice(root: Path, manifest: Manifest, towers: set[str]) -> dict[str, np.ndarray]:
    """The first SERVE_CHECK_ITEMS inputs and fp32 embeddings of each loaded tower, hash-checked."""
    stored, path = intact_reference(
        root,
        manifest,
        "refusing the serve-time check's reference",
        missing=f"{root} carries no stored reference, so the serve-time check cannot run; re-release it with "
        "clip-export 0.1+ or pass check='off' to serve unchecked",
    )
    wanted = [name for tower in sorted(towers) for name in (TOWERS[tower].input_name, TOWERS[tower].output_name)]
    sliced: dict[str, np.ndarray] = {}
    with np.load(path) as data:
        for name in wanted:
            if name not in data.files or len(data[name]) < SERVE_CHECK_ITEMS:
                found = len(data[name]) if name in data.files else 0
                raise ManifestError(
                    f"the stored reference {stored.path} holds {found} '{name}' rows; the serve-time check needs "
                    f"{SERVE_CHECK_ITEMS}"
                )
            sliced[name] = data[name][:SERVE_CHECK_ITEMS]
    return sliced


def bundled_reference_images(manifest: Manifest) -> list[Path] | None:
    """The first SERVE_CHECK_ITEMS photographs the stored reference was computed on, when they are the
    bundled evaluation set's (every export made with the default set); None otherwise."""
    from clip_export.core.evalset import BUNDLED_DIR

    reference = manifest.reference
    names = reference.images if reference else ()
    if reference is None or reference.evalset != "bundled" or len(names) < SERVE_CHECK_ITEMS:
        return None
    paths = [BUNDLED_DIR / "images" / str(name) for name in names[:SERVE_CHECK_ITEMS]]
    return paths if all(p.name == n and p.is_file() for p, n in zip(paths, names)) else None


@dataclass(frozen=True)
class ServingInputs:
    """How the serving process turns the reference items into inputs: its own preprocessing (and
    whether it is the exact PIL reference, which decides the thresholds) and its own tokenizer."""

    pixels: Callable[[list[Path]], np.ndarray]
    exact_preprocessing: bool
    token_ids: Callable[[list[str]], np.ndarray]


PASSED_ELSEWHERE = "skipped: passed in this environment by another process of the same job"


def serving_coverage(manifest: Manifest, entry: ArtifactEntry, serving: ServingInputs | None) -> str:
    """What a serve-time pass vouches for, besides the environment: these bytes, the manifest's input
    settings (preprocessing, tokenizer, reference) and how this process preprocesses photos."""
    preprocessing = "stored tensors" if serving is None else "exact" if serving.exact_preprocessing else "fast"
    return f"{entry.sha256}|{settings_digest(manifest)}|{preprocessing}"


def _serving_input(
    manifest: Manifest, tower: str, sliced: dict[str, np.ndarray], serving: ServingInputs, precision: str
) -> tuple[np.ndarray, str, str]:
    """(inputs, threshold key, what they were made from), through the serving path where it can be run."""
    if tower == "text":
        captions = list(((manifest.reference.captions if manifest.reference else None) or ())[:SERVE_CHECK_ITEMS])
        if len(captions) < SERVE_CHECK_ITEMS:
            return sliced[TOWERS[tower].input_name], precision, "stored token ids (the manifest lists no captions)"
        ids = serving.token_ids(captions)
        stored = sliced[TOWERS[tower].input_name]
        if ids.shape != stored.shape or not np.array_equal(ids, stored):
            differ = len(captions) if ids.shape != stored.shape else int((ids != stored).any(axis=1).sum())
            raise ServeCheckError(
                f"the serving tokenizer turns {differ} of {len(captions)} reference captions into other ids than the "
                f"reference was computed with (ids {ids.shape} against {stored.shape}): the tokenizer file or its "
                "settings (cleaning, context length) in the manifest changed after verification"
            )
        return ids, precision, "the reference captions, tokenized by the serving tokenizer"
    images = bundled_reference_images(manifest)
    if images is None:
        return sliced[TOWERS[tower].input_name], precision, "stored pixels (the reference images are not bundled)"
    key = precision if serving.exact_preprocessing else f"preproc-{precision}"
    return serving.pixels(images), key, "the reference photographs, decoded and preprocessed for serving"


def check_here(
    manifest: Manifest,
    entry: ArtifactEntry,
    session: Any,
    reference: Callable[[], dict[str, np.ndarray]],
    mode: str,
    serving: ServingInputs | None = None,
    cpu_flags: Collection[str] | None = None,
    passed: Mapping[str, str] | None = None,
) -> ServeCheck:
    """Run the reference items (loaded on demand) through the serving path and `session`;
    ServeCheckError names every metric it misses. An INT8 artifact of a kernel family that is not for
    this CPU (`cpu_flags`, default: its own) is refused before any number is computed: a pass on a
    few items would not make it safe here. `passed` ({coverage: environment key}, ServeCheck.passed_here)
    holds checks another process of the same job ran and passed: under "auto" they count as a verdict
    does, for these bytes, settings and preprocessing in exactly this environment only."""
    env = current_environment(session.get_providers()[0])
    if mode == "off":
        return ServeCheck(entry.path, "skipped: turned off by the caller", env)
    family = int8_family_of(entry)
    flags = env.isa_flags if cpu_flags is None else tuple(cpu_flags)
    if family is not None and env.provider == CPU_PROVIDER and not family.applies_to(flags):
        raise ServeCheckError(
            f"{entry.path} is INT8 of the {family.name} kernel family ({(entry.detail('conversion') or {}).get('weight_type', '?')} "
            f"weights, for {family.tiers}); "
            f"this CPU has none of {', '.join(family.requires_any_flag)}, where its kernels saturate. "
            "Serve the QUInt8 artifact (clip-export int8 builds both), or precision='fp32'"
        )
    if mode == "auto":
        row = passing_verdict_here(manifest, entry, env)
        if row is not None:
            return ServeCheck(
                entry.path, f"skipped: verified in this environment on {row.date or 'an earlier run'}", env
            )
    covers = serving_coverage(manifest, entry, serving)  # what a pass here vouches for, or one handed on did
    if mode == "auto" and (passed or {}).get(covers) == env.key:
        return ServeCheck(entry.path, PASSED_ELSEWHERE, env)
    started = time.perf_counter()
    tower, sliced = TOWERS[entry.tower], reference()
    key = threshold_key(entry.precision, entry.format)
    inputs, made_from = sliced[tower.input_name], "stored tensors"
    if serving is not None:
        inputs, key, made_from = _serving_input(manifest, entry.tower, sliced, serving, key)
    got = session.run(None, {tower.input_name: inputs})[0]
    metrics = tuple(numeric_metrics(sliced[tower.output_name], got, THRESHOLDS[key]))
    failures = [m.failure() for m in metrics if not m.passed]
    if failures:
        raise ServeCheckError(
            f"{entry.path} misses its {key} thresholds on {SERVE_CHECK_ITEMS} reference items ({made_from}) "
            "in this environment "
            f"({env.describe()}): {'; '.join(failures)}. "
            + ("Serve the fp32 artifact (precision='fp32'), or run" if entry.precision != "fp32" else "Run")
            + " 'clip-export verify' here for the full report"
        )
    return ServeCheck(entry.path, "pass", env, metrics, time.perf_counter() - started, made_from, covers)
