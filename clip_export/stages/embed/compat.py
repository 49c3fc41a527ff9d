"""Can I keep my index? Two artifacts of one model compared on the evaluation set (`clip-export compat`).

OLD built the index; NEW will embed queries (and new documents). Both embed the bundled images and
captions; then NEW's captions search OLD's images, OLD's captions search NEW's images and NEW's
images search OLD's, each ranking compared with the all-OLD ranking (metrics.retrieval_agreement:
top-1 agreement, ties counted as agreement, and top-5 overlap), and the mean |Δ| between their
normalised embeddings. Against spec.COMPAT_THRESHOLDS: interchangeable, or re-index needed.

A shared piece, not a stage: `embed` runs it when a dataset is extended with another artifact.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clip_export.core.environment import current_environment
from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import load_evalset
from clip_export.core.metrics import Metric, l2_normalize, retrieval_agreement
from clip_export.core.spec import COMPAT_THRESHOLDS
from clip_export.runtime.serving import ClipOnnx

INTERCHANGEABLE = "interchangeable"
REINDEX = "re-index needed"


@dataclass(frozen=True)
class CompatResult:
    old: str
    new: str
    metrics: tuple[Metric, ...]
    verdict: str
    environment: str
    items: str

    def summary(self) -> str:
        failing = [m.failure() for m in self.metrics if not m.passed]
        return (
            f"{self.new} against {self.old}: {self.verdict}"
            + (f" ({'; '.join(failing)})" if failing else "")
            + f", measured on {self.environment}"
        )


def _embed_both(model: ClipOnnx, images: list, captions: list[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    visual = model.embed_images(images) if model._visual is not None else None
    text = model.embed_texts(captions) if model._text is not None else None
    return visual, text


def compare_models(old: ClipOnnx, new: ClipOnnx, old_label: str, new_label: str) -> CompatResult:
    old_model, new_model = old.manifest.model, new.manifest.model
    if old_model.arch != new_model.arch:
        raise ClipExportError(
            f"{old_label} is {old_model.arch} and {new_label} is {new_model.arch}: different "
            "models never share an index"
        )
    evalset = load_evalset()
    images = [str(p) for p in evalset.image_paths]
    captions = list(evalset.captions)
    old_img, old_txt = _embed_both(old, images, captions)
    new_img, new_txt = _embed_both(new, images, captions)
    for name, a, b in (("image", old_img, new_img), ("text", old_txt, new_txt)):
        if a is not None and b is not None and a.shape[1] != b.shape[1]:
            raise ClipExportError(
                f"{old_label} embeds {name}s in {a.shape[1]} dimensions and {new_label} in {b.shape[1]}: different "
                "embedding spaces never share an index"
            )
    limits = COMPAT_THRESHOLDS
    metrics: list[Metric] = []
    if old_img is not None and new_img is not None:
        if old_txt is not None and new_txt is not None:
            forward = retrieval_agreement(old_txt, old_img, new_txt, old_img)
            reverse = retrieval_agreement(old_txt, old_img, old_txt, new_img)
            metrics += [
                Metric("text_new_to_image_old_top1", forward.top1_agreement, limits.top1_agreement, ">="),
                Metric("text_new_to_image_old_top5", forward.top5_overlap, limits.top5_overlap, ">="),
                Metric("text_old_to_image_new_top1", reverse.top1_agreement, limits.top1_agreement, ">="),
                Metric("text_old_to_image_new_top5", reverse.top5_overlap, limits.top5_overlap, ">="),
            ]
        image = retrieval_agreement(old_img, old_img, new_img, old_img, exclude_self=True)
        metrics += [
            Metric("image_new_to_image_old_top1", image.top1_agreement, limits.top1_agreement, ">="),
            Metric("image_new_to_image_old_top5", image.top5_overlap, limits.top5_overlap, ">="),
            Metric("image_mean_abs_normalized", _mean_abs(old_img, new_img), limits.mean_abs_normalized),
        ]
    if old_txt is not None and new_txt is not None:
        metrics.append(Metric("text_mean_abs_normalized", _mean_abs(old_txt, new_txt), limits.mean_abs_normalized))
    if not metrics:
        raise ClipExportError(f"{old_label} and {new_label} share no tower to compare")
    verdict = INTERCHANGEABLE if all(m.passed for m in metrics) else REINDEX
    provider = next(iter(new.artifacts.values())).provider
    return CompatResult(
        old_label,
        new_label,
        tuple(metrics),
        verdict,
        current_environment(provider).describe(),
        f"{len(images)} images, {len(captions)} captions ({evalset.source})",
    )


def _mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(l2_normalize(a) - l2_normalize(b)).mean())


def parse_side(value: str) -> tuple[Path, str]:
    """OLD / NEW as DIR or DIR:PRECISION (fp32 when left out)."""
    path, _, precision = value.rpartition(":") if ":" in value and not Path(value).exists() else (value, "", "fp32")
    return Path(path), precision or "fp32"


def compat(old: str, new: str) -> CompatResult:
    """Compare two artifacts, each given as DIR[:PRECISION]. The serve-time check is off here:
    compat measures the two against each other; `clip-export verify` judges each against torch."""
    (old_dir, old_precision), (new_dir, new_precision) = parse_side(old), parse_side(new)
    old_model = ClipOnnx.from_release(old_dir, precision=old_precision, check="off")
    new_model = ClipOnnx.from_release(new_dir, precision=new_precision, check="off")
    return compare_models(old_model, new_model, f"{old_dir}:{old_precision}", f"{new_dir}:{new_precision}")
