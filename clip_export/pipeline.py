"""The release-day pipeline: export, convert, verify and bench in one call, stopping at a failed gate."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from .errors import ClipExportError
from .models import ModelSpec
from .progress import Progress, silent

PRECISIONS = ("fp32", "fp16", "int8")


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

    @property
    def passed(self) -> bool:
        return self.failed_stage is None


def run_pipeline(
    spec: ModelSpec,
    *,
    out: Path = Path("artifacts"),
    precisions: Sequence[str] = ("fp32", "fp16", "int8"),
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
    from .bench import bench
    from .convert import convert_fp16, quantize_int8
    from .export import export_onnx
    from .verify import verify

    done: list[str] = []
    model_dir: Path | None = None
    steps: list[tuple[str, Callable[[], object]]] = [("export", lambda: export_onnx(spec, out=out, force=force, progress=progress))]
    if "fp16" in precisions:
        steps.append(("fp16", lambda: convert_fp16(model_dir, force=force, progress=progress)))  # type: ignore[arg-type]
    if "int8" in precisions:
        steps.append(("int8", lambda: quantize_int8(model_dir, force=force, progress=progress)))  # type: ignore[arg-type]
    if trt:
        from .tensorrt import build_engines

        steps.append(("trt", lambda: build_engines(model_dir, fp16="fp16" in precisions, force=force, progress=progress)))  # type: ignore[arg-type]
    failed = failure = None
    verify_result = bench_result = None
    for name, step in steps:
        progress(f"pipeline stage: {name}")
        try:
            outcome = step()
        except ClipExportError as exc:
            failed, failure = name, str(exc)
            break
        if name == "export":
            model_dir = outcome.model_dir  # type: ignore[attr-defined]
        done.append(name)
    if failed is None and model_dir is not None:
        progress("pipeline stage: verify")
        only = (lambda e: e["precision"] in precisions or e["format"] == "tensorrt")
        verify_result = verify(model_dir, providers=providers, only=only, progress=progress)
        done.append("verify")
        if not verify_result.passed:
            failed, failure = "verify", "; ".join(verify_result.failures)
    if failed is None and model_dir is not None:
        progress("pipeline stage: bench")
        bench_result = bench(model_dir, providers=providers, batch_sizes=(1,), budget_s=bench_budget_s, precisions=list(precisions), breakdown=False, progress=progress)
        done.append("bench")
    summary = _summary(model_dir, verify_result, bench_result) if model_dir is not None else ()
    return PipelineResult(model_dir, tuple(done), failed, failure, tuple(summary))


def _summary(model_dir: Path, verify_result: object, bench_result: object) -> list[SummaryRow]:
    from .manifest import read_manifest

    manifest = read_manifest(model_dir)
    checks = {c.path: c for c in getattr(verify_result, "checks", ())}
    latency = {(r.name, r.provider_ran): r.p50_ms for r in getattr(bench_result, "rows", ()) if r.kind == "artifact" and r.latency is not None}
    rows = []
    for entry in manifest["artifacts"]:
        check = checks.get(entry["path"])
        ran = check.provider_ran if check else None
        p50 = latency.get((entry["path"], ran)) if ran else next((v for (n, _), v in latency.items() if n == entry["path"]), None)
        rows.append(
            SummaryRow(entry["path"], entry["tower"], entry["precision"], entry["format"], entry["bytes"], check.status if check else "not verified", check.metric("mean_abs_normalized") if check else None, check.min_top1 if check else None, p50, ran)
        )
    return rows
