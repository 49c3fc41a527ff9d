from __future__ import annotations

import numpy as np

from clip_export.core.metrics import Metric, in_batches, l2_normalize, numeric_metrics, retrieval_agreement
from clip_export.core.spec import THRESHOLDS, VERIFY_BATCH


def test_ties_are_counted_not_failed() -> None:
    ref_q = np.array([[1.0, 0.0]])
    gallery = np.array([[1.0, 0.001], [1.0, 0.002], [0.0, 1.0]])
    swapped = gallery[[1, 0, 2]]
    r = retrieval_agreement(ref_q, gallery, ref_q, swapped)
    assert r.top1_agreement == 1.0 and r.ties == 1


def test_a_decisive_swap_is_a_disagreement() -> None:
    """Forty gallery items; one item far below the top jumps above it: that is no tie."""
    ref_q = np.array([[1.0, 0.0]])
    cosines = np.linspace(0.0, 0.9, 40)
    gallery = np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)
    moved = gallery.copy()
    moved[0] = [0.95, np.sqrt(1 - 0.95**2)]
    r = retrieval_agreement(ref_q, gallery, ref_q, moved)
    assert r.top1_agreement == 0.0 and r.ties == 0


def test_numeric_metrics_fail_on_nan_and_distance() -> None:
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    close = {m.name: m for m in numeric_metrics(ref, ref * 3.0, THRESHOLDS["fp32"])}  # scale does not count
    assert all(m.passed for m in close.values()) and close["mean_abs_normalized"].value == 0.0
    far = {m.name: m for m in numeric_metrics(ref, np.array([[1.0, 0.1, 0.0], [0.0, 1.0, np.nan]]), THRESHOLDS["fp32"])}
    assert not far["nan_count"].passed and far["nan_count"].value == 1.0
    assert (
        far["mean_abs_normalized"].value != far["mean_abs_normalized"].value and not far["mean_abs_normalized"].passed
    )  # NaN never passes


def test_metric_directions_and_messages() -> None:
    assert Metric("x", 0.5, 1.0).passed and not Metric("x", 2.0, 1.0).passed
    assert Metric("cos", 0.99, 0.98, ">=").passed and not Metric("cos", 0.97, 0.98, ">=").passed
    assert Metric("cos", 0.97, 0.98, ">=").failure() == "cos = 0.97 (limit >= 0.98)"
    assert np.allclose(np.linalg.norm(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])), axis=1), [1.0, 0.0])


def test_in_batches_runs_verify_batches_and_keeps_the_rows_in_order() -> None:
    inputs = np.arange(2 * VERIFY_BATCH + 3, dtype=np.float32).reshape(-1, 1)
    seen: list[int] = []

    def doubled(rows: np.ndarray) -> np.ndarray:
        seen.append(len(rows))
        return rows * 2

    np.testing.assert_array_equal(in_batches(doubled, inputs), inputs * 2)
    assert seen == [VERIFY_BATCH, VERIFY_BATCH, 3]
