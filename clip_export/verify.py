"""Verify stage: every artifact in a manifest against the fp32 torch reference, all metrics at once."""
from __future__ import annotations

import dataclasses
import errno
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import preprocess_graph
from .environment import Environment, current_environment, environment_table, versions
from .errors import ClipExportError, ProviderUnavailableError
from .evalset import EvalSet, load_evalset
from .reference import compute_reference
from .manifest import atomic_write_text, integrity_problems, now_iso, read_manifest, require_intact, resolve_inside, write_manifest
from .metrics import Metric, Retrieval, l2_normalize, numeric_metrics, retrieval_agreement
from .progress import Progress, silent
from .runner import NotRunnableHereError, open_runner
from .sessions import provider_name
from .spec import PREPROCESSING_FORMAT, THRESHOLDS, TOWERS, Thresholds, threshold_key

BATCH_CHECK_SIZE = 7


@dataclass(frozen=True)
class ArtifactCheck:
    path: str
    tower: str
    precision: str
    format: str
    provider_requested: str
    provider_ran: str | None
    status: str  # pass | fail | not runnable
    metrics: tuple[Metric, ...] = ()
    failures: tuple[str, ...] = ()
    sha256: str | None = None
    threshold_set: str = ""
    environment: Environment | None = None  # where these numbers were obtained

    @property
    def passed(self) -> bool:
        return self.status == "pass"

    def metric(self, name: str) -> float | None:
        return next((m.value for m in self.metrics if m.name == name), None)

    @property
    def min_top1(self) -> float | None:
        """The worst top-1 agreement over the retrieval directions, the summary tables' column."""
        top1 = [m.value for m in self.metrics if m.name.endswith("_top1")]
        return min(top1) if top1 else None


@dataclass(frozen=True)
class VerifyResult:
    model_dir: Path
    checks: tuple[ArtifactCheck, ...]
    evalset: str
    reference: str
    report_path: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()  # every verdict the manifest holds for these bytes, all environments
    write_error: str | None = None  # the report or manifest could not be written; the checks above still stand

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.path} [{c.provider_requested}]: {f}" for c in self.checks for f in c.failures]


def _structure_problems(session: Any, entry: dict[str, Any]) -> list[str]:
    problems = []
    declared_in, declared_out = entry["inputs"][0], entry["outputs"][0]
    got_in, got_out = session.get_inputs()[0], session.get_outputs()[0]
    expected_in_type = {"float32": "tensor(float)", "int64": "tensor(int64)", "float16": "tensor(float16)"}[declared_in["dtype"]]
    if got_in.name != declared_in["name"] or got_in.type != expected_in_type:
        problems.append(f"input is {got_in.name} {got_in.type}, declared {declared_in['name']} {declared_in['dtype']}")
    if got_out.name != declared_out["name"] or got_out.type != "tensor(float)":
        problems.append(f"output is {got_out.name} {got_out.type}, declared {declared_out['name']} float32")
    if isinstance(got_in.shape[0], int):
        problems.append(f"batch axis of {got_in.name} is fixed at {got_in.shape[0]}, declared dynamic")
    return problems


def _retrieval_metrics(tower: str, ref: dict[str, np.ndarray], got: np.ndarray, limits: Thresholds) -> list[Metric]:
    directions: dict[str, Retrieval] = {}
    image, text = TOWERS["visual"].output_name, TOWERS["text"].output_name
    if tower == "visual":
        directions["image2image"] = retrieval_agreement(ref[image], ref[image], got, got, exclude_self=True)
        if text in ref:
            directions["text2image"] = retrieval_agreement(ref[text], ref[image], ref[text], got)
            directions["image2text"] = retrieval_agreement(ref[image], ref[text], got, ref[text])
    else:
        directions["text2text"] = retrieval_agreement(ref[text], ref[text], got, got, exclude_self=True)
        if image in ref:
            directions["text2image"] = retrieval_agreement(ref[text], ref[image], got, ref[image])
            directions["image2text"] = retrieval_agreement(ref[image], ref[text], ref[image], got)
    metrics = []
    for name, r in directions.items():
        metrics += [
            Metric(f"{name}_top1", r.top1_agreement, limits.top1_agreement, ">="),
            Metric(f"{name}_top5_overlap", r.top5_overlap, limits.top5_overlap, ">="),
            Metric(f"{name}_ranking_changed", r.ranking_changed),
            Metric(f"{name}_ties", float(r.ties)),
        ]
    return metrics


def _batch_metric(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, limits: Thresholds) -> Metric:
    """Rows of one batch of 7 must equal the same inputs run one at a time."""
    sample = inputs[:BATCH_CHECK_SIZE]
    if len(sample) < BATCH_CHECK_SIZE:
        sample = np.concatenate([sample] * (BATCH_CHECK_SIZE // len(sample) + 1))[:BATCH_CHECK_SIZE]
    batched = run(sample)
    single = np.concatenate([run(sample[i : i + 1]) for i in range(len(sample))])
    delta = float(np.abs(l2_normalize(batched) - l2_normalize(single)).max())
    return Metric("batch7_vs_single_max_abs", delta, limits.max_abs_normalized)


def _load_reference(model_dir: Path, manifest: dict[str, Any], reference: str, evalset: EvalSet | None) -> tuple[dict[str, np.ndarray], str, str]:
    if reference == "stored" and evalset is None:
        record = manifest.get("reference")
        if record is None:
            raise ClipExportError(f"{model_dir} has no stored reference; use --reference torch")
        require_intact(model_dir, record, "the stored reference cannot be trusted")
        with np.load(resolve_inside(model_dir, record["path"], "the reference")) as data:
            return {k: data[k] for k in data.files}, record.get("evalset", "bundled"), "stored (torch fp32 at export time)"
    from .models import load_model, spec_from_manifest

    try:
        spec = spec_from_manifest(manifest["model"])
    except ClipExportError as exc:
        raise ClipExportError(f"--reference torch: {exc}") from None
    loaded = load_model(spec)
    towers = sorted({a["tower"] for a in manifest["artifacts"]})
    chosen = evalset or load_evalset()
    return compute_reference(loaded, chosen, towers, bool(manifest.get("normalize"))), chosen.source, "recomputed with torch fp32"


def check_artifact(model_dir: Path, entry: dict[str, Any], provider: str, ref: dict[str, np.ndarray], limits: Thresholds, images: Sequence[Path] | None = None) -> ArtifactCheck:
    """One artifact on one provider; `images` are the raw files behind the reference, which a preprocessing graph is fed."""
    tower = entry["tower"]
    base = dict(path=entry["path"], tower=tower, precision=entry["precision"], format=entry["format"], provider_requested=provider, sha256=entry["sha256"], threshold_set=threshold_key(entry["precision"], entry["format"]), environment=current_environment(provider))
    problems = integrity_problems(model_dir, entry)
    if problems:
        return ArtifactCheck(**base, provider_ran=None, status="fail", failures=tuple(f"integrity: {p}" for p in problems))
    input_key, embed_key = TOWERS[tower].input_name, TOWERS[tower].output_name
    if input_key not in ref:
        return ArtifactCheck(**base, provider_ran=None, status="fail", failures=(f"the reference has no {tower} tower inputs",))
    inputs, expected = ref[input_key], ref[embed_key]
    if entry["format"] == PREPROCESSING_FORMAT and (images is None or len(images) != len(expected)):
        why = "the reference's images are unknown" if images is None else f"{len(images)} raw images for {len(expected)} reference embeddings"
        return ArtifactCheck(**base, provider_ran=None, status="fail", failures=(f"a preprocessing graph is checked on the reference's raw images: {why}; verify with --images DIR",))
    try:
        runner = open_runner(model_dir, entry, provider)
    except NotRunnableHereError as exc:
        return ArtifactCheck(**base, provider_ran=None, status="not runnable", failures=(f"not runnable here: {exc}",))
    except ProviderUnavailableError as exc:
        return ArtifactCheck(**base, provider_ran=None, status="fail", failures=(f"provider: {exc}",))
    ran = runner.provider_ran
    if entry["format"] == PREPROCESSING_FORMAT:  # raw files in, embeddings out: one image of its own size per run
        structure = preprocess_graph.structure_problems(runner.session)
        got = preprocess_graph.run_raw(runner.session, preprocess_graph.load_rgb_images(images or ()))
        batch_metric = None
    else:
        got = np.concatenate([runner.run(inputs[i : i + 8]) for i in range(0, len(inputs), 8)])
        # An engine's I/O and batch profile are fixed by its build; the structure checks are ONNX's.
        structure = _structure_problems(runner.session, entry) if runner.session is not None else []
        batch_metric = _batch_metric(runner.run, inputs, limits) if runner.session is not None else None
    del runner
    base["environment"] = current_environment(ran)
    metrics = numeric_metrics(expected, got, limits)
    if batch_metric is not None:
        metrics.append(batch_metric)
    if np.isfinite(got).all():
        metrics += _retrieval_metrics(tower, ref, got, limits)
    failures = [f"structure: {p}" for p in structure] + [m.failure() for m in metrics if not m.passed]
    return ArtifactCheck(**base, provider_ran=ran, status="fail" if failures else "pass", metrics=tuple(metrics), failures=tuple(failures))


def gate(model_dir: Path, entry: dict[str, Any], provider: str = "cpu") -> ArtifactCheck:
    """Verify one artifact, not yet in the manifest, with its precision's default thresholds."""
    manifest = read_manifest(model_dir)
    ref, source, _ = _load_reference(model_dir, manifest, "stored", None)
    return check_artifact(model_dir, entry, provider, ref, THRESHOLDS[threshold_key(entry["precision"], entry["format"])], reference_images(source, None))


def reference_images(source: str, evalset: EvalSet | None) -> tuple[Path, ...] | None:
    """The raw image files a reference was computed from, when known: the bundled set or --images."""
    if evalset is not None:
        return evalset.image_paths
    return load_evalset().image_paths if source == "bundled" else None


def thresholds_with_overrides(overrides: dict[str, float]) -> dict[str, Thresholds]:
    """Overrides are `metric=value` for every precision or `precision.metric=value` for one."""
    table = dict(THRESHOLDS)
    for key, value in overrides.items():
        precision, _, metric = key.rpartition(".")
        if metric not in Thresholds.__dataclass_fields__:
            raise ClipExportError(f"unknown threshold '{metric}'; choose from {', '.join(Thresholds.__dataclass_fields__)}")
        if precision and precision not in table:
            raise ClipExportError(f"unknown precision '{precision}' in threshold '{key}'; choose from {', '.join(table)}")
        for name in [precision] if precision else list(table):
            table[name] = table[name].replace(**{metric: value})
    return table


def verify(
    model_dir: Path,
    *,
    providers: Sequence[str] = ("cpu",),
    reference: str = "stored",
    images: Path | None = None,
    texts: Path | None = None,
    thresholds: dict[str, float] | None = None,
    only: Callable[[dict[str, Any]], bool] | None = None,
    write: bool = True,
    progress: Progress = silent,
) -> VerifyResult:
    """Check every artifact listed in DIR's manifest on every requested provider."""
    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    if reference not in ("stored", "torch"):
        raise ClipExportError(f"--reference must be 'stored' or 'torch', not '{reference}'")
    provider_names = [provider_name(p) for p in providers]
    limits = thresholds_with_overrides(thresholds or {})
    evalset = load_evalset(images, texts) if (images or texts) else None
    if evalset is not None:
        reference = "torch"
    progress(f"loading the reference for {model_dir.name} ({reference})")
    ref, evalset_source, reference_desc = _load_reference(model_dir, manifest, reference, evalset)
    images = reference_images(evalset_source, evalset)
    checks = []
    entries = [e for e in manifest["artifacts"] if only is None or only(e)]
    if not entries:
        raise ClipExportError(f"no artifacts to verify in {model_dir}")
    for entry in entries:
        for provider in provider_names:
            if entry["format"] == "tensorrt" and provider != provider_names[0]:
                continue  # an engine runs on its own runtime; one row is enough
            progress(f"verifying {entry['path']} on {provider if entry['format'] != 'tensorrt' else 'the tensorrt runtime'}")
            key = threshold_key(entry["precision"], entry["format"])
            checks.append(check_artifact(model_dir, entry, provider, ref, limits[key], images))
    found_versions = versions()
    manifest = read_manifest(model_dir)
    record = merged_verification(manifest, [_check_json(c) for c in checks], evalset_source, reference_desc, found_versions)
    result = VerifyResult(model_dir, tuple(checks), evalset_source, reference_desc, versions=found_versions, history=tuple(record["results"]))
    if not write:
        return result
    report = model_dir / "VERIFY.md"
    try:
        atomic_write_text(report, render_markdown(result, limits))
        manifest["verification"] = record
        write_manifest(model_dir, manifest)
    except OSError as exc:
        return dataclasses.replace(result, write_error=describe_write_error(exc, model_dir))
    return dataclasses.replace(result, report_path=report)


def describe_write_error(exc: OSError, where: Path) -> str:
    """A failed write in words: a full disk and a read-only directory are named as such."""
    reason = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(exc.errno or 0, exc.strerror or str(exc))
    return f"could not write VERIFY.md and the manifest's verification section in {where}: {reason}"


def merged_verification(manifest: dict[str, Any], rows: list[dict[str, Any]], evalset: str, reference: str, found_versions: dict[str, str]) -> dict[str, Any]:
    """This run's rows replace earlier rows for the same artifact, provider and environment; rows
    from other environments, providers or artifacts stay while their artifact's bytes are
    unchanged, so verifying on a second machine adds its verdicts instead of erasing the first's.
    A legacy row that names no environment is replaced by any fresh row for its artifact and provider."""
    date = now_iso()
    current = {a["path"]: a["sha256"] for a in manifest["artifacts"]}
    fresh = {(r["path"], r["provider_requested"], environment_key(r)) for r in rows}
    fresh_any_env = {(path, provider) for path, provider, _ in fresh}

    def superseded(r: dict[str, Any]) -> bool:
        key = environment_key(r)
        return (r["path"], r["provider_requested"], key) in fresh or (key is None and (r["path"], r["provider_requested"]) in fresh_any_env)

    previous = (manifest.get("verification") or {}).get("results", [])
    kept = [r for r in previous if not superseded(r) and current.get(r["path"]) == r.get("sha256")]
    merged = kept + [{**r, "date": date} for r in rows]
    return {
        "date": date,
        "passed": bool(merged) and all(r["status"] == "pass" for r in merged),
        "environments": sorted({k for r in merged if (k := environment_key(r))}),
        "versions": found_versions,
        "evalset": evalset,
        "reference": reference,
        "results": merged,
    }


def environment_key(row: dict[str, Any]) -> str | None:
    env = row.get("environment")
    return env.get("key") if isinstance(env, dict) else None


def _check_json(check: ArtifactCheck) -> dict[str, Any]:
    return {
        "path": check.path,
        "sha256": check.sha256,
        "tower": check.tower,
        "precision": check.precision,
        "format": check.format,
        "provider_requested": check.provider_requested,
        "provider_ran": check.provider_ran,
        "status": check.status,
        "thresholds": check.threshold_set,
        "metrics": {m.name: m.value for m in check.metrics},
        "failures": list(check.failures),
        "environment": check.environment.to_json() if check.environment else None,
    }


SUMMARY_METRICS = ("mean_abs_raw", "mean_abs_normalized", "max_abs_normalized", "min_cosine", "nan_count", "batch7_vs_single_max_abs")


def render_markdown(result: VerifyResult, limits: dict[str, Thresholds]) -> str:
    here = sorted({c.environment.describe() for c in result.checks if c.environment})
    lines = [
        f"# Verification of {result.model_dir.name}",
        "",
        f"Verdict of this run: **{'PASS' if result.passed else 'FAIL'}**, for these bytes on: {'; '.join(here) or 'no environment'}. "
        "A verdict holds for the environment it names; other CPUs and providers run other kernels.",
        f"Reference: {result.reference}; evaluation set: {result.evalset}.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in result.versions.items())}.",
        "",
        "| artifact | provider ran | thresholds | " + " | ".join(SUMMARY_METRICS) + " | top-1 agreement (min) | verdict |",
        "|---" * (len(SUMMARY_METRICS) + 5) + "|",
    ]
    for c in result.checks:
        values = [f"{c.metric(m):.3g}" if c.metric(m) is not None else "-" for m in SUMMARY_METRICS]
        ran = c.provider_ran or f"{c.provider_requested} (did not run)"
        top1_text = f"{c.min_top1:.3f}" if c.min_top1 is not None else "-"
        lines.append(f"| {c.path} | {ran} | {c.threshold_set} | " + " | ".join(values) + f" | {top1_text} | {c.status} |")
    failures = result.failures
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    lines += ["", "## Environments each artifact was verified in", "", "Every run on another machine or provider adds its rows here; a row holds for the bytes whose sha256 it names.", ""]
    lines += environment_table(result.history)
    lines += ["", "## Thresholds", "", "| set | " + " | ".join(Thresholds.__dataclass_fields__) + " |", "|---" * (len(Thresholds.__dataclass_fields__) + 1) + "|"]
    for name, t in limits.items():
        lines.append(f"| {name} | " + " | ".join(f"{getattr(t, f):g}" for f in Thresholds.__dataclass_fields__) + " |")
    return "\n".join(lines) + "\n"
