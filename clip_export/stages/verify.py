"""Verify stage: every artifact in a manifest against the fp32 torch reference, all metrics at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_export.core.artifact import ArtifactEntry, Manifest, VerificationRow
from clip_export.core.checks import (
    NOT_APPLICABLE,
    ArtifactCheck,
    check_artifact,
    check_tokenizer,
    load_reference,
    reference_images,
)
from clip_export.core.configs import NO_LOCAL_SOURCES, LocalSources
from clip_export.core.environment import environment_table, versions
from clip_export.core.errors import ClipExportError, write_failure
from clip_export.core.evalset import load_evalset
from clip_export.core.manifest import (
    OVERRIDDEN_PASS,
    atomic_write_text,
    now_iso,
    read_manifest,
    settings_digest,
    write_manifest,
)
from clip_export.core.progress import Progress, silent
from clip_export.core.sessions import provider_name
from clip_export.core.spec import (
    CAPTIONS_CHECKED,
    CAPTIONS_WITH_OTHER_IDS,
    TENSORRT_FORMAT,
    THRESHOLDS,
    TOKENIZER_FORMAT,
    TOWERS,
    Thresholds,
    threshold_key,
)


@dataclass(frozen=True)
class VerifyResult:
    model_dir: Path
    checks: tuple[ArtifactCheck, ...]
    evalset: str
    reference: str
    report_path: Path | None = None
    versions: dict[str, str] = field(default_factory=dict)
    history: tuple[VerificationRow, ...] = ()  # every verdict the manifest holds for these bytes, all environments
    write_error: str | None = None  # the report or manifest could not be written; the checks above still stand

    @property
    def passed(self) -> bool:
        """Every check passed, or was not applicable here (an INT8 family for other CPUs)."""
        return any(c.passed for c in self.checks) and all(c.passed or c.status == NOT_APPLICABLE for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [
            f"{c.path} [{c.provider_requested}]: {f}"
            for c in self.checks
            if c.status != NOT_APPLICABLE
            for f in c.failures
        ]

    @property
    def not_applicable(self) -> list[str]:
        return [f"{c.path}: {f}" for c in self.checks if c.status == NOT_APPLICABLE for f in c.failures]


def thresholds_with_overrides(overrides: dict[str, float]) -> dict[str, Thresholds]:
    """Overrides are `metric=value` for every precision or `precision.metric=value` for one."""
    table = dict(THRESHOLDS)
    for key, value in overrides.items():
        precision, _, metric = key.rpartition(".")
        if metric not in Thresholds.__dataclass_fields__:
            raise ClipExportError(
                f"unknown threshold '{metric}'; choose from {', '.join(Thresholds.__dataclass_fields__)}"
            )
        if precision and precision not in table:
            raise ClipExportError(
                f"unknown precision '{precision}' in threshold '{key}'; choose from {', '.join(table)}"
            )
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
    only: Callable[[ArtifactEntry], bool] | None = None,
    write: bool = True,
    progress: Progress = silent,
    sources: LocalSources = NO_LOCAL_SOURCES,
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
    ref, evalset_source, reference_desc = load_reference(model_dir, manifest, reference, evalset, sources)
    images = reference_images(evalset_source, evalset)
    checks = []
    entries = [e for e in manifest.artifacts if only is None or only(e)]
    if not entries:
        raise ClipExportError(f"no artifacts to verify in {model_dir}")
    for entry in entries:
        for provider in provider_names:
            if entry.format == TENSORRT_FORMAT and provider != provider_names[0]:
                continue  # an engine runs on its own runtime; one row is enough
            progress(
                f"verifying {entry.path} on {provider if entry.format != TENSORRT_FORMAT else 'the tensorrt runtime'}"
            )
            key = threshold_key(entry.precision, entry.format)
            check = check_artifact(model_dir, entry, provider, ref, limits[key], images)
            changed = [
                f"{key}.{f.name}={getattr(limits[key], f.name):g}"
                for f in dataclasses.fields(limits[key])
                if getattr(limits[key], f.name) != getattr(THRESHOLDS[key], f.name)
            ]
            if check.status == "pass" and changed:  # named in the row, VERIFY.md, the table and the card
                check = dataclasses.replace(check, status=f"{OVERRIDDEN_PASS}{', '.join(changed)})")
            checks.append(check)
    if any(e.tower == "text" for e in entries):  # the tokenizer feeds every text artifact
        progress("checking the bundled tokenizer.json on the reference's raw captions")
        tokenizer_check = check_tokenizer(
            model_dir, manifest, reference_captions(manifest, reference, evalset), ref.get(TOWERS["text"].input_name)
        )
        checks += [tokenizer_check] if tokenizer_check is not None else []
    found_versions = versions()
    manifest = read_manifest(model_dir)
    settings = settings_digest(manifest)  # the input settings every row of this run covers
    record = merged_verification(
        manifest,
        [_check_row(c, settings) for c in checks],
        evalset_source,
        reference_desc,
        found_versions,
    )
    result = VerifyResult(
        model_dir,
        tuple(checks),
        evalset_source,
        reference_desc,
        versions=found_versions,
        history=tuple(VerificationRow.from_json(r, "this run") for r in record["results"]),
    )
    if not write:
        return result
    report = model_dir / "VERIFY.md"
    try:
        atomic_write_text(report, render_markdown(result, limits))
        manifest.set_section("verification", record)
        write_manifest(model_dir, manifest)
    except OSError as exc:
        return dataclasses.replace(result, write_error=describe_write_error(exc, model_dir))
    return dataclasses.replace(result, report_path=report)


def reference_captions(manifest: Manifest, reference: str, evalset: Any) -> tuple[str, ...] | None:
    """The raw captions behind the reference's ids: --texts, the stored reference's record, or the bundled set."""
    if evalset is not None:
        return tuple(evalset.captions)
    if reference == "stored":
        return manifest.reference.captions if manifest.reference else None
    return tuple(load_evalset().captions)


def describe_write_error(exc: OSError, where: Path) -> str:
    """A failed write in words: a full disk and a read-only directory are named as such."""
    reason = write_failure(exc) or exc.strerror or str(exc)
    return f"could not write VERIFY.md and the manifest's verification section in {where}: {reason}"


def merged_verification(
    manifest: Manifest, rows: list[VerificationRow], evalset: str, reference: str, found_versions: dict[str, str]
) -> dict[str, Any]:
    """This run's rows replace earlier rows for the same artifact, provider and environment; rows
    from other environments, providers or artifacts stay while their artifact's bytes are
    unchanged, so verifying on a second machine adds its verdicts instead of erasing the first's.
    A legacy row that names no environment is replaced by any fresh row for its artifact and provider."""
    date = now_iso()
    current = {a.path: a.sha256 for a in manifest.artifacts}
    tokenizer_file = manifest.section_file("tokenizer.file", "the manifest")
    if tokenizer_file:
        current[tokenizer_file.path] = tokenizer_file.sha256
    fresh = {(r.path, r.provider_requested, r.environment_key) for r in rows}
    fresh_any_env = {(path, provider) for path, provider, _ in fresh}

    def superseded(r: VerificationRow) -> bool:
        key = r.environment_key
        return (r.path, r.provider_requested, key) in fresh or (
            key is None and (r.path, r.provider_requested) in fresh_any_env
        )

    kept = [r for r in manifest.verification_rows if not superseded(r) and current.get(r.path) == r.sha256]
    merged = kept + [VerificationRow.from_json({**r.fields, "date": date}, "this run") for r in rows]
    return {
        "date": date,
        "passed": any(r.status == "pass" for r in merged) and all(r.status in ("pass", NOT_APPLICABLE) for r in merged),
        "environments": sorted({k for r in merged if (k := r.environment_key)}),
        "versions": found_versions,
        "evalset": evalset,
        "reference": reference,
        "results": [r.to_json() for r in merged],
    }


def _check_row(check: ArtifactCheck, settings: str) -> VerificationRow:
    return VerificationRow.from_json(
        {
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
            "settings_sha256": settings,  # the input settings this verdict covers (manifest.settings_digest)
        },
        check.path,
    )


SUMMARY_METRICS = (
    "mean_abs_raw",
    "mean_abs_normalized",
    "max_abs_normalized",
    "min_cosine",
    "nan_count",
    "batch7_vs_single_max_abs",
)


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
        "| artifact | provider ran | thresholds | "
        + " | ".join(SUMMARY_METRICS)
        + " | top-1 agreement (min) | verdict |",
        "|---" * (len(SUMMARY_METRICS) + 5) + "|",
    ]
    for c in result.checks:
        values = [f"{c.metric(m):.3g}" if c.metric(m) is not None else "-" for m in SUMMARY_METRICS]
        ran = c.provider_ran or f"{c.provider_requested} (did not run)"
        top1_text = f"{c.min_top1:.3f}" if c.min_top1 is not None else "-"
        lines.append(
            f"| {c.path} | {ran} | {c.threshold_set} | " + " | ".join(values) + f" | {top1_text} | {c.status} |"
        )
    for c in result.checks:
        if c.format == TOKENIZER_FORMAT and c.metric(CAPTIONS_CHECKED) is not None:
            lines += [
                "",
                f"{c.path}, through the runtime's tokenizer code (the `tokenizers` library and the manifest's "
                "cleaning), on the "
                f"reference's {c.metric(CAPTIONS_CHECKED):.0f} raw captions: {c.metric(CAPTIONS_WITH_OTHER_IDS):.0f} "
                "give other ids than "
                "the reference tokenizer (limit 0). Equal ids make every text row above hold from raw captions too.",
            ]
    failures = result.failures
    if failures:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in failures]
    lines += [
        "",
        "## Environments each artifact was verified in",
        "",
        "Every run on another machine or provider adds its rows here; a row holds for the bytes whose sha256 it names.",
        "",
    ]
    lines += environment_table(result.history)
    lines += [
        "",
        "## Thresholds",
        "",
        "| set | " + " | ".join(Thresholds.__dataclass_fields__) + " |",
        "|---" * (len(Thresholds.__dataclass_fields__) + 1) + "|",
    ]
    for name, t in limits.items():
        lines.append(f"| {name} | " + " | ".join(f"{getattr(t, f):g}" for f in Thresholds.__dataclass_fields__) + " |")
    return "\n".join(lines) + "\n"
