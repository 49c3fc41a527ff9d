"""Outlier channels split off INT8 weight MatMuls: which channels, and an identity in float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clip_export.core.outlier_split import (
    channel_ranges,
    measure_outlier_channels,
    outlier_channels,
    split_outlier_channels,
    weight_consumers,
)
from clip_export.core.sessions import create_session
from clip_export.core.spec import Int8OutlierSplit

RULE = Int8OutlierSplit(ratio=6.0, max_share=0.25, calibration_items=4)


def _graph() -> onnx.ModelProto:
    """x [batch, 3, 8] read by two MatMuls (q, k: like Q/K/V sharing a LayerNorm's output) and by one
    whose weight another node shares; flattened, by a Gemm with transB=1 and one with transB=0."""
    rng = np.random.default_rng(0)
    weights = {
        "wq": rng.standard_normal((8, 5)).astype(np.float32),
        "wk": rng.standard_normal((8, 5)).astype(np.float32),
        "w_t": rng.standard_normal((6, 8)).astype(np.float32),
        "w_n": rng.standard_normal((8, 6)).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
        "w_shared": rng.standard_normal((8, 4)).astype(np.float32),
        "flat": np.array([-1, 8], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
        helper.make_node("Gemm", ["x2", "w_t", "b"], ["y_t"], name="gemm_t", transB=1),
        helper.make_node("Gemm", ["x2", "w_n", "b"], ["y_n"], name="gemm_n", beta=0.5),
        helper.make_node("MatMul", ["x", "w_shared"], ["y3"], name="shared_a"),
        helper.make_node("MatMul", ["x2", "w_shared"], ["y4"], name="shared_b"),
    ]
    outputs = {
        "q": ["batch", 3, 5],
        "k": ["batch", 3, 5],
        "y_t": ["rows", 6],
        "y_n": ["rows", 6],
        "y3": ["batch", 3, 4],
        "y4": ["rows", 4],
    }
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inputs() -> np.ndarray:
    x = np.random.default_rng(1).standard_normal((4, 3, 8)).astype(np.float32)
    x[..., 2] *= 50.0  # one outlier channel
    return x


def test_the_wide_channels_are_chosen_by_their_ratio_to_the_median_and_capped() -> None:
    ranges = {"wide": np.array([1.0, 1.1, 50.0, 0.9, 1.0, 8.0, 1.2, 1.0]), "flat": np.ones(8), "zero": np.zeros(8)}
    assert {k: v.tolist() for k, v in outlier_channels(ranges, RULE).items()} == {"wide": [2, 5]}
    narrow = Int8OutlierSplit(ratio=6.0, max_share=0.125, calibration_items=4)  # one channel of eight
    assert outlier_channels(ranges, narrow)["wide"].tolist() == [2]


def test_channel_ranges_are_the_per_channel_maxima_over_the_inputs(tmp_path: Path) -> None:
    x = _inputs()
    ranges = channel_ranges(_graph(), ["x", "q"], "x", x, tmp_path)
    np.testing.assert_allclose(ranges["x"], np.abs(x).reshape(-1, 8).max(axis=0), rtol=1e-6)
    assert ranges["q"].shape == (5,) and not list(tmp_path.iterdir())  # the probe's scratch is gone


def test_the_channels_to_split_are_measured_on_the_candidates_inputs(tmp_path: Path) -> None:
    """Only the inputs of splittable candidates are measured (x and its flattened x2, not w_shared's
    users alone), and the wide channel is chosen in both."""
    rule = Int8OutlierSplit(ratio=6.0, max_share=0.25, calibration_items=4)
    channels, ranges = measure_outlier_channels(
        _graph(), ["q", "k", "gemm_t", "gemm_n"], "x", _inputs(), rule, tmp_path
    )
    assert sorted(ranges) == ["x", "x2"]
    assert {t: c.tolist() for t, c in channels.items()} == {"x": [2], "x2": [2]}


def test_the_split_is_an_identity_in_float_and_the_quantized_side_never_sees_the_channel() -> None:
    model = _graph()
    consumers = weight_consumers(model, ["q", "k", "gemm_t", "gemm_n", "shared_a", "shared_b"])
    assert {t: [n.name for n in nodes] for t, nodes in consumers.items()} == {
        "x": ["q", "k"],
        "x2": ["gemm_t", "gemm_n"],
    }  # w_shared is read by two nodes: its rows cannot be zeroed for one of them
    x = _inputs()
    before = create_session(model.SerializeToString()).run(None, {"x": x})
    split = split_outlier_channels(
        model, ["q", "k", "gemm_t", "gemm_n", "shared_a", "shared_b"], {"x": np.array([2]), "x2": np.array([2])}
    )
    assert split.channels == {"x": 1, "x2": 1}
    assert split.float_matmuls == tuple(f"{n}/outlier_matmul" for n in ("q", "k", "gemm_t", "gemm_n"))
    onnx.checker.check_model(split.model)
    after = create_session(split.model.SerializeToString()).run(None, {"x": x})
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    nodes = {n.name: n for n in split.model.graph.node}
    weights = {i.name: numpy_helper.to_array(i) for i in split.model.graph.initializer}
    for name, masked in (("q", "x"), ("k", "x"), ("gemm_t", "x2"), ("gemm_n", "x2")):
        assert nodes[name].input[0] == f"{masked}/inliers"  # what the quantizer will quantize
        mask = weights[f"{masked}/inlier_mask"]
        assert mask[2] == 0.0 and (np.delete(mask, 2) == 1.0).all()
    assert not weights["wq"][2].any() and not weights["w_t"][:, 2].any() and not weights["w_n"][2].any()
    assert nodes["shared_a"].input[0] == "x" and weights["w_shared"][2].any()  # left whole
