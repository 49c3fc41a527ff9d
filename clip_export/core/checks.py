"""One artifact against the fp32 reference: integrity, structure, numbers, retrieval agreement.

The verify stage runs these over a whole manifest; each conversion (fp16, INT8, q4, TensorRT,
preprocessing graphs) runs `gate` on the artifact it is about to keep. Shared below the stages so
no stage imports another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core import preprocess_graph
from clip_export.core.artifact import ArtifactEntry, Manifest
from clip_export.core.configs import NO_LOCAL_SOURCES, LocalSources
from clip_export.core.environment import Environment, current_environment
from clip_export.core.errors import ClipExportError, ProviderUnavailableError
from clip_export.core.evalset import EvalSet, load_evalset
from clip_export.core.manifest import intact_reference, integrity_problems, read_manifest, resolve_inside
from clip_export.core.metrics import Metric, Retrieval, in_batches, l2_normalize, numeric_metrics, retrieval_agreement
from clip_export.core.reference import compute_reference
from clip_export.core.runner import NotRunnableHereError, open_runner
from clip_export.core.sessions import provider_name
from clip_export.core.spec import (
    CAPTIONS_CHECKED,
    CAPTIONS_WITH_OTHER_IDS,
    CPU_PROVIDER,
    PREPROCESSING_FORMAT,
    THRESHOLDS,
    TOKENIZER_CHECK,
    TOKENIZER_FORMAT,
    TOWERS,
    Thresholds,
    int8_family_of,
    threshold_key,
)

BATCH_CHECK_SIZE = 7
# The status of an INT8 artifact checked on a CPU its kernel family is not for (QInt8 without
# VNNI): neither a pass nor a failure of the artifact, and never a claim for this tier.
NOT_APPLICABLE = "not applicable"
# How a check whose provider is not installed or has no device here names that failure.
PROVIDER_MISSING = "provider: "


@dataclass(frozen=True)
class ArtifactCheck:
    path: str
    tower: str
    precision: str
    format: str
    provider_requested: str
    provider_ran: str | None
    status: str  # pass | fail | not runnable | not applicable (an INT8 family for other CPUs)
    metrics: tuple[Metric, ...] = ()
    failures: tuple[str, ...] = ()
    sha256: str | None = None
    threshold_set: str = ""
    environment: Environment | None = None  # where these numbers were obtained

    @property
    def passed(self) -> bool:
        return self.status == "pass" or self.status.startswith("pass (thresholds overridden: ")

    def metric(self, name: str) -> float | None:
        return next((m.value for m in self.metrics if m.name == name), None)

    @property
    def provider_missing(self) -> bool:
        """The requested provider is not on this machine: the row is a failure that says nothing of the bytes."""
        return any(f.startswith(PROVIDER_MISSING) for f in self.failures)

    @property
    def min_top1(self) -> float | None:
        """The worst top-1 agreement over the retrieval directions, the summary tables' column."""
        top1 = [m.value for m in self.metrics if m.name.endswith("_top1")]
        return min(top1) if top1 else None


def _structure_problems(session: Any, entry: ArtifactEntry) -> list[str]:
    problems = []
    declared_in, declared_out = entry.inputs[0], entry.outputs[0]
    got_in, got_out = session.get_inputs()[0], session.get_outputs()[0]
    expected_in_type = {"float32": "tensor(float)", "int64": "tensor(int64)", "float16": "tensor(float16)"}[
        declared_in.dtype
    ]
    if got_in.name != declared_in.name or got_in.type != expected_in_type:
        problems.append(f"input is {got_in.name} {got_in.type}, declared {declared_in.name} {declared_in.dtype}")
    if got_out.name != declared_out.name or got_out.type != "tensor(float)":
        problems.append(f"output is {got_out.name} {got_out.type}, declared {declared_out.name} float32")
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


def load_reference(
    model_dir: Path,
    manifest: Manifest,
    reference: str,
    evalset: EvalSet | None,
    sources: LocalSources = NO_LOCAL_SOURCES,
) -> tuple[dict[str, np.ndarray], str, str]:
    if reference == "stored" and evalset is None:
        _, path = intact_reference(
            model_dir,
            manifest,
            "the stored reference cannot be trusted",
            missing=f"{model_dir} has no stored reference; use --reference torch",
        )
        with np.load(path) as data:
            return (
                {k: data[k] for k in data.files},
                (manifest.reference.evalset if manifest.reference else None) or "bundled",
                "stored (torch fp32 at export time)",
            )
    from clip_export.core.models import load_model, spec_from_manifest

    try:
        spec = spec_from_manifest(manifest.model.to_json(), sources)
    except ClipExportError as exc:
        raise ClipExportError(f"--reference torch: {exc}") from exc
    loaded = load_model(spec)
    towers = sorted({a.tower for a in manifest.artifacts})
    chosen = evalset or load_evalset()
    return (
        compute_reference(loaded, chosen, towers, manifest.normalize),
        chosen.source,
        "recomputed with torch fp32",
    )


def check_artifact(
    model_dir: Path,
    entry: ArtifactEntry,
    provider: str,
    ref: dict[str, np.ndarray],
    limits: Thresholds,
    images: Sequence[Path] | None = None,
) -> ArtifactCheck:
    """One artifact on one provider; `images` are the raw files behind the reference, which a preprocessing graph is fed."""
    tower = entry.tower
    provider = provider_name(provider)  # "cpu" and "CPUExecutionProvider" are one provider, recorded by its full name
    base = dict(
        path=entry.path,
        tower=tower,
        precision=entry.precision,
        format=entry.format,
        provider_requested=provider,
        sha256=entry.sha256,
        threshold_set=threshold_key(entry.precision, entry.format),
        environment=current_environment(provider),
    )
    problems = integrity_problems(model_dir, entry)
    if problems:
        return ArtifactCheck(
            **base, provider_ran=None, status="fail", failures=tuple(f"integrity: {p}" for p in problems)
        )
    family = int8_family_of(entry)
    if family is not None and provider == CPU_PROVIDER and not family.applies_to(base["environment"].isa_flags):
        return ArtifactCheck(
            **base,
            provider_ran=None,
            status=NOT_APPLICABLE,
            failures=(
                f"not applicable on this CPU ({base['environment'].tier_label}): the {family.name} INT8 family "
                f"({family.tiers}) needs one of {', '.join(family.requires_any_flag)}; its verdict here would "
                "say nothing",
            ),
        )
    input_key, embed_key = TOWERS[tower].input_name, TOWERS[tower].output_name
    if input_key not in ref:
        return ArtifactCheck(
            **base, provider_ran=None, status="fail", failures=(f"the reference has no {tower} tower inputs",)
        )
    inputs, expected = ref[input_key], ref[embed_key]
    if entry.format == PREPROCESSING_FORMAT and (images is None or len(images) != len(expected)):
        why = (
            "the reference's images are unknown"
            if images is None
            else f"{len(images)} raw images for {len(expected)} reference embeddings"
        )
        return ArtifactCheck(
            **base,
            provider_ran=None,
            status="fail",
            failures=(
                f"a preprocessing graph is checked on the reference's raw images: {why}; verify with --images DIR",
            ),
        )
    try:
        runner = open_runner(model_dir, entry, provider)
    except NotRunnableHereError as exc:
        return ArtifactCheck(**base, provider_ran=None, status="not runnable", failures=(f"not runnable here: {exc}",))
    except ProviderUnavailableError as exc:
        return ArtifactCheck(**base, provider_ran=None, status="fail", failures=(f"{PROVIDER_MISSING}{exc}",))
    ran = runner.provider_ran
    if entry.format == PREPROCESSING_FORMAT:  # raw files in, embeddings out: one image of its own size per run
        structure = preprocess_graph.structure_problems(runner.session)
        got = preprocess_graph.run_raw(runner.session, preprocess_graph.load_rgb_images(images or ()))
        batch_metric = None
    else:
        got = in_batches(runner.run, inputs)
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
    return ArtifactCheck(
        **base,
        provider_ran=ran,
        status="fail" if failures else "pass",
        metrics=tuple(metrics),
        failures=tuple(failures),
    )


def check_tokenizer(
    model_dir: Path, manifest: Manifest, captions: Sequence[str] | None, reference_ids: np.ndarray | None
) -> ArtifactCheck | None:
    """The bundled tokenizer.json on the reference's raw captions, through the runtime's own
    tokenizer code, against the ids the reference was computed from. None where the export bundles
    no tokenizer file (no text tower, or an export from before tokenizer.json)."""
    from clip_export.core.tokenizer import TextTokenizer

    file = manifest.section_file("tokenizer.file", str(model_dir))
    if file is None or manifest.find(tower="text") is None:
        return None
    base = dict(
        path=file.path,
        tower="text",
        precision="-",
        format=TOKENIZER_FORMAT,
        provider_requested=CPU_PROVIDER,
        sha256=file.sha256,
        threshold_set=TOKENIZER_CHECK,
        environment=current_environment(CPU_PROVIDER),
    )
    problems = [f"integrity: {p}" for p in integrity_problems(model_dir, file)]
    if not problems and (captions is None or reference_ids is None or len(captions) != len(reference_ids)):
        problems = [
            f"the reference's captions are unknown ({'no captions recorded' if captions is None else f'{len(captions)} captions for {0 if reference_ids is None else len(reference_ids)} reference ids'}); "
            "verify with --reference torch"
        ]
    if problems:
        return ArtifactCheck(**base, provider_ran=None, status="fail", failures=tuple(problems))
    try:
        tokenizer = TextTokenizer.from_file(
            resolve_inside(model_dir, file.path, "the tokenizer file"), manifest.tokenizer
        )
        ids = tokenizer(list(captions or ()), context_length=int(reference_ids.shape[1]))
    except (ClipExportError, KeyError, ValueError) as exc:  # an unreadable file or settings fail this row, not verify
        return ArtifactCheck(
            **base, provider_ran=None, status="fail", failures=(f"the tokenizer file cannot be used: {exc}",)
        )
    differing = [i for i in range(len(ids)) if not np.array_equal(ids[i], reference_ids[i])]
    metric = Metric(CAPTIONS_WITH_OTHER_IDS, float(len(differing)), 0.0)
    failures = (
        [f"{metric.failure()} of {len(ids)}; first: caption {differing[0]} {captions[differing[0]][:60]!r}"]
        if differing
        else []
    )
    metrics = (metric, Metric(CAPTIONS_CHECKED, float(len(ids))))
    return ArtifactCheck(
        **base,
        provider_ran=CPU_PROVIDER,
        status="fail" if failures else "pass",
        metrics=metrics,
        failures=tuple(failures),
    )


def gate(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
    """Verify one artifact, not yet in the manifest, with its precision's default thresholds."""
    manifest = read_manifest(model_dir)
    ref, source, _ = load_reference(model_dir, manifest, "stored", None)
    return check_artifact(
        model_dir,
        entry,
        provider,
        ref,
        THRESHOLDS[threshold_key(entry.precision, entry.format)],
        reference_images(source, None),
    )


def reference_images(source: str, evalset: EvalSet | None) -> tuple[Path, ...] | None:
    """The raw image files a reference was computed from, when known: the bundled set or --images."""
    if evalset is not None:
        return evalset.image_paths
    return load_evalset().image_paths if source == "bundled" else None
