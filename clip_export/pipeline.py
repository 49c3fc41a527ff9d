"""The release-day pipeline: export, convert, verify and bench in one call, stopping at a failed gate."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clip_export.core.configs import LocalSources
from clip_export.core.environment import current_environment
from clip_export.core.errors import ClipExportError
from clip_export.core.models import ModelSpec
from clip_export.core.progress import Progress, silent
from clip_export.core.sessions import provider_name
from clip_export.core.spec import (
    ONNX_FORMAT,
    PIPELINE_PRECISIONS,
    PRECISION_SPECS,
    PRECISIONS,
    TENSORRT_FORMAT,
    TOWERS,
    PrecisionSpec,
)


@dataclass(frozen=True)
class SummaryRow:
    artifact: str
    tower: str
    precision: str
    format: str
    bytes: int
    verdict: str
    mean_abs_normalized: float | None
    min_top1: float | None
    batch1_p50_ms: float | None
    provider: str | None


@dataclass(frozen=True)
class PipelineResult:
    model_dir: Path | None
    stages_done: tuple[str, ...]
    failed_stage: str | None
    failure: str | None
    summary: tuple[SummaryRow, ...]
    environments: tuple[str, ...] = ()  # where the verdicts in the summary were obtained
    resumed: tuple[str, ...] = ()  # stages an earlier run had passed, kept instead of redone
    notes: tuple[str, ...] = ()  # one line each for what a stage deliberately did not build (an INT8 family, a tower)

    @property
    def passed(self) -> bool:
        return self.failed_stage is None


def converter(precision: PrecisionSpec) -> Callable[..., object]:
    """The stage a precision row names ("module:function"), imported when first run so that the CLI and
    the pipeline load no conversion they do not use."""
    if precision.converter is None:
        raise ClipExportError(f"precision {precision.name} is not made by a conversion (it is the export itself)")
    module_name, _, function_name = precision.converter.partition(":")
    try:
        return getattr(importlib.import_module(module_name), function_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as exc:
        raise ClipExportError(
            f"precision {precision.name}'s converter {precision.converter!r} (spec.PRECISION_SPECS) cannot be "
            f"imported: {exc}"
        ) from exc


def converters() -> dict[str, Callable[..., object]]:
    """The stage that makes each converted precision of spec.PRECISION_SPECS, in the registry's order."""
    return {p.name: converter(p) for p in PRECISION_SPECS.values() if p.converted}


def run_pipeline(
    spec: ModelSpec,
    *,
    out: Path = Path("artifacts"),
    precisions: Sequence[str] = PIPELINE_PRECISIONS,
    trt: bool = False,
    providers: Sequence[str] = ("cpu",),
    force: bool = False,
    bench_budget_s: float = 1.0,
    progress: Progress = silent,
) -> PipelineResult:
    """Each stage is a gate; the first failure stops the run, and what passed before it stays usable."""
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ClipExportError(f"unknown precision(s) {', '.join(unknown)}; choose from {', '.join(PRECISIONS)}")
    from clip_export.stages.bench.bench import bench
    from clip_export.stages.export import export_onnx
    from clip_export.stages.verify import verify

    done: list[str] = []
    model_dir: Path | None = None
    kept = None if force else resumable(Path(out) / spec.slug, spec)
    resumed: list[str] = []
    steps: list[tuple[str, Callable[[], object]]] = []
    if kept is None:
        steps.append(("export", lambda: export_onnx(spec, out=out, force=force, progress=progress)))
    else:
        model_dir = kept.model_dir
        resumed.append("export")
        done.append("export")
        progress(f"resuming in {model_dir}: the export that passed its gate is kept")
    for precision, convert in converters().items():
        if precision not in precisions:
            continue
        missing = [t for t in TOWERS if kept is None or t not in kept.converted.get(precision, ())]
        if not missing:
            resumed.append(precision)
            done.append(precision)
            continue
        steps.append(
            (
                precision,
                lambda convert=convert, missing=missing: convert(
                    model_dir, towers=missing, force=force, progress=progress
                ),
            )
        )  # type: ignore[arg-type, misc]
    if trt:
        from clip_export.stages.tensorrt import build_engines

        steps.append(
            ("trt", lambda: build_engines(model_dir, fp16="fp16" in precisions, force=force, progress=progress))
        )  # type: ignore[arg-type]
    failed = failure = None
    verify_result = bench_result = None
    gates: dict[str, tuple[str, float | None, float | None]] = {}
    notes: list[str] = []
    for name, step in steps:
        progress(f"pipeline stage: {name}")
        try:
            outcome = step()
        except ClipExportError as exc:
            failed, failure = name, str(exc)
            break
        if name == "export":
            model_dir = outcome.model_dir  # type: ignore[attr-defined]
        gates.update(_gate_outcomes(name, outcome, model_dir))
        notes += [f"{name}: {note}" for note in getattr(outcome, "notes", ())]
        done.append(name)
    if failed is None and model_dir is not None:
        progress("pipeline stage: verify")
        only = lambda e: e.precision in precisions or e.format == TENSORRT_FORMAT
        verify_result = verify(model_dir, providers=providers, only=only, progress=progress)
        done.append("verify")
        if not verify_result.passed:
            failed, failure = "verify", "; ".join(verify_result.failures)
    if failed is None and model_dir is not None:
        progress("pipeline stage: bench")
        bench_result = bench(
            model_dir,
            providers=providers,
            batch_sizes=(1,),
            budget_s=bench_budget_s,
            precisions=list(precisions),
            breakdown=False,
            progress=progress,
            sources=LocalSources.of(spec),
        )
        done.append("bench")
    summary = _summary(model_dir, verify_result, bench_result, gates) if model_dir is not None else ()
    checks = getattr(verify_result, "checks", ())
    environments = sorted({c.environment.describe() for c in checks if c.environment}) or (
        [current_environment(provider_name("cpu")).describe()] if gates else []
    )
    return PipelineResult(
        model_dir, tuple(done), failed, failure, tuple(summary), tuple(environments), tuple(resumed), tuple(notes)
    )


@dataclass(frozen=True)
class Resumable:
    model_dir: Path
    converted: dict[str, tuple[str, ...]]  # precision -> towers whose artifact an earlier run kept


def resumable(model_dir: Path, spec: ModelSpec) -> Resumable | None:
    """An earlier run's directory for the same model with its fp32 towers intact, or None.

    Conversions keep an artifact only after it passed its gate, so what the manifest lists has passed."""
    from clip_export.core.manifest import integrity_problems, read_manifest

    if not (model_dir / "manifest.json").exists():
        return None
    manifest = read_manifest(model_dir)
    model = manifest.model
    if (model.arch, model.source) != (spec.arch, spec.source):
        return None
    fp32 = manifest.select(precision="fp32", format=ONNX_FORMAT)
    if {a.tower for a in fp32} != set(TOWERS) or any(integrity_problems(model_dir, a) for a in fp32):
        return None
    converted: dict[str, list[str]] = {}
    for entry in manifest.artifacts:
        if entry.format == ONNX_FORMAT and entry.precision != "fp32" and not integrity_problems(model_dir, entry):
            converted.setdefault(entry.precision, []).append(entry.tower)
    return Resumable(model_dir, {k: tuple(v) for k, v in converted.items()})


def _gate_outcomes(
    stage: str, outcome: object, model_dir: Path | None
) -> dict[str, tuple[str, float | None, float | None]]:
    """artifact path -> (verdict, mean |Δ| normalised, min top-1) of the gate a stage ran on it."""
    if stage == "export" and model_dir is not None:
        # A tower's path is model_dir / its file, relative or absolute as --out was given.
        return {
            Path(t.path).relative_to(model_dir).as_posix(): ("pass (export gate)", t.parity_mean_abs, None)
            for t in getattr(outcome, "towers", ())
        }
    return {
        a.path: (f"{a.verdict} ({stage} gate)", a.mean_abs_normalized, a.min_top1)
        for a in getattr(outcome, "artifacts", ())
    }


def _summary(
    model_dir: Path,
    verify_result: object,
    bench_result: object,
    gates: dict[str, tuple[str, float | None, float | None]],
) -> list[SummaryRow]:
    """One row per artifact: verify's verdict when it ran, else what the artifact's own gate measured."""
    from clip_export.core.manifest import read_manifest

    manifest = read_manifest(model_dir)
    checks = {c.path: c for c in getattr(verify_result, "checks", ())}
    latency = {
        (r.name, r.provider_ran): r.p50_ms
        for r in getattr(bench_result, "rows", ())
        if r.kind == "artifact" and r.latency is not None
    }
    rows = []
    for entry in manifest.artifacts:
        check = checks.get(entry.path)
        ran = check.provider_ran if check else None
        p50 = (
            latency.get((entry.path, ran))
            if ran
            else next((v for (n, _), v in latency.items() if n == entry.path), None)
        )
        if check:
            verdict, mean_abs, top1 = check.status, check.metric("mean_abs_normalized"), check.min_top1
        else:
            verdict, mean_abs, top1 = gates.get(
                entry.path, ("kept from an earlier run (passed its gate then)", None, None)
            )
        rows.append(
            SummaryRow(
                entry.path,
                entry.tower,
                entry.precision,
                entry.format,
                entry.bytes,
                verdict,
                mean_abs,
                top1,
                p50,
                ran,
            )
        )
    return rows
