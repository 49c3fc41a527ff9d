"""The numbers every gate computes: L2 normalisation, per-dimension distance, retrieval agreement.

Shared by the export gate, verify, bench's preprocessing study and the runtime's serve-time check,
so one definition of "how far from the reference" holds everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from clip_export.core.spec import VERIFY_BATCH, Thresholds

# A swap of the top-1 is a tie, not a disagreement, when the reference itself separates the two
# items by less than three standard deviations of the difference of two of the artifact's score
# errors on that query (3·√2·RMS of its score deviations), or by less than this floor in cosine
# units: independent rounding of that size reorders them. A swap across a wider margin needs
# outlier errors and counts as a disagreement. Ties are counted and shown.
TIE_MARGIN = 1e-6


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    limit: float | None = None
    direction: str = "<="  # the value must be <= limit, or >= limit

    @property
    def passed(self) -> bool:
        if self.limit is None:
            return True
        if self.value != self.value:  # NaN never passes
            return False
        return self.value <= self.limit if self.direction == "<=" else self.value >= self.limit

    def failure(self) -> str:
        return f"{self.name} = {self.value:.4g} (limit {self.direction} {self.limit:.4g})"


def in_batches(run: Callable[[np.ndarray], np.ndarray], inputs: np.ndarray, batch: int = VERIFY_BATCH) -> np.ndarray:
    """run() over `inputs` in batches of `batch` rows, the outputs concatenated in order."""
    return np.concatenate([run(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])


def run_batches(session: Any, input_name: str, inputs: np.ndarray, batch: int = VERIFY_BATCH) -> np.ndarray:
    return in_batches(lambda rows: session.run(None, {input_name: rows})[0], inputs, batch)


@dataclass(frozen=True)
class Retrieval:
    top1_agreement: float
    top5_overlap: float
    ranking_changed: float
    ties: int


def retrieval_agreement(
    ref_q: np.ndarray, ref_g: np.ndarray, art_q: np.ndarray, art_g: np.ndarray, exclude_self: bool = False
) -> Retrieval:
    """How often the artifact's ranking of the gallery matches the reference ranking, per query."""
    ref_scores = l2_normalize(ref_q) @ l2_normalize(ref_g).T
    art_scores = l2_normalize(art_q) @ l2_normalize(art_g).T
    if exclude_self:
        np.fill_diagonal(ref_scores, -np.inf)
        np.fill_diagonal(art_scores, -np.inf)
    k = min(5, ref_scores.shape[1] - int(exclude_self))
    depth = min(10, ref_scores.shape[1] - int(exclude_self))
    ref_order = np.argsort(-ref_scores, axis=1, kind="stable")
    art_order = np.argsort(-art_scores, axis=1, kind="stable")
    agree, ties, overlap, changed = 0, 0, 0.0, 0
    finite = np.isfinite(ref_scores)
    deviation = np.where(finite, art_scores, 0.0) - np.where(finite, ref_scores, 0.0)
    noise = 3.0 * np.sqrt(2.0) * np.sqrt((deviation**2).sum(axis=1) / np.maximum(finite.sum(axis=1), 1))
    for q in range(len(ref_scores)):
        r1, a1 = ref_order[q, 0], art_order[q, 0]
        if r1 == a1:
            agree += 1
        elif ref_scores[q, r1] - ref_scores[q, a1] <= max(TIE_MARGIN, noise[q]):
            agree += 1
            ties += 1
        overlap += len(set(ref_order[q, :k]) & set(art_order[q, :k])) / k
        changed += int(not np.array_equal(ref_order[q, :depth], art_order[q, :depth]))
    n = len(ref_scores)
    return Retrieval(agree / n, overlap / n, changed / n, ties)


def numeric_metrics(ref: np.ndarray, got: np.ndarray, limits: Thresholds) -> list[Metric]:
    """Distance of the artifact's embeddings from the reference's; NaN or Inf anywhere fails."""
    finite = np.isfinite(got)
    nan_count = int(np.isnan(got).sum())
    inf_count = int(np.isinf(got).sum())
    safe = np.where(finite, got, 0.0)
    ref_n, got_n = l2_normalize(ref), l2_normalize(safe)
    cosine = np.sum(ref_n * got_n, axis=1)
    return [
        Metric("mean_abs_raw", float(np.abs(ref.astype(np.float64) - safe).mean())),
        Metric(
            "mean_abs_normalized",
            float(np.abs(ref_n - got_n).mean()) if finite.all() else float("nan"),
            limits.mean_abs_normalized,
        ),
        Metric(
            "max_abs_normalized",
            float(np.abs(ref_n - got_n).max()) if finite.all() else float("nan"),
            limits.max_abs_normalized,
        ),
        Metric("min_cosine", float(cosine.min()), limits.min_cosine, ">="),
        Metric("nan_count", float(nan_count), 0.0),
        Metric("inf_count", float(inf_count), 0.0),
    ]
