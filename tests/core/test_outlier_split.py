"""Outlier channels split off INT8 weight MatMuls: which channels, and an identity in float."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clip_export.core.outlier_split import channel_ranges, outlier_channels, split_outlier_channels, weight_consumers
from clip_export.core.sessions import create_session
from clip_export.core.spec import Int8OutlierSplit

RULE = Int8OutlierSplit(ratio=6.0, max_share=0.25, calibration_items=4)


def _graph() -> onnx.ModelProto:
    """x [batch, 3, 8] → MatMul(w1); flattened, Gemm(w2, transB=1); and two MatMuls sharing w_shared."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((8, 5)).astype(np.float32),
        "w2": rng.standard_normal((6, 8)).astype(np.float32),
        "b2": rng.standard_normal(6).astype(np.float32),
        "w_shared": rng.standard_normal((8, 4)).astype(np.float32),
        "flat": np.array([-1, 8], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["y1"], name="mm"),
        helper.make_node("Reshape", ["x", "flat"], ["x2"], name="flatten"),
        helper.make_node("Gemm", ["x2", "w2", "b2"], ["y2"], name="gemm", transB=1),
        helper.make_node("MatMul", ["x", "w_shared"], ["y3"], name="shared_a"),
        helper.make_node("MatMul", ["x2", "w_shared"], ["y4"], name="shared_b"),
    ]
    outputs = {"y1": ["batch", 3, 5], "y2": ["rows", 6], "y3": ["batch", 3, 4], "y4": ["rows", 4]}
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
    ranges = {"wide": np.array([1.0, 1.1, 50.0, 0.9, 1.0, 8.0, 1.2, 1.0]), "flat": np.ones(8)}
    assert {k: v.tolist() for k, v in outlier_channels(ranges, RULE).items()} == {"wide": [2, 5]}
    narrow = Int8OutlierSplit(ratio=6.0, max_share=0.125, calibration_items=4)  # one channel of eight
    assert outlier_channels(ranges, narrow)["wide"].tolist() == [2]


def test_channel_ranges_are_the_per_channel_maxima_over_the_inputs() -> None:
    x = _inputs()
    ranges = channel_ranges(_graph(), ["x", "y1"], "x", x)
    np.testing.assert_allclose(ranges["x"], np.abs(x).reshape(-1, 8).max(axis=0), rtol=1e-6)
    assert ranges["y1"].shape == (5,)


def test_the_split_is_an_identity_in_float_for_matmul_and_transposed_gemm(tmp_path) -> None:
    model = _graph()
    consumers = weight_consumers(model, ["mm", "gemm", "shared_a", "shared_b"])
    assert {t: [n.name for n in nodes] for t, nodes in consumers.items()} == {"x": ["mm"], "x2": ["gemm"]}
    x = _inputs()
    before = create_session(model.SerializeToString()).run(None, {"x": x})
    channels = {"x": np.array([2]), "x2": np.array([2])}
    split = split_outlier_channels(model, consumers, channels)
    assert split.float_matmuls == ("mm/outlier_matmul", "gemm/outlier_matmul") and split.channels == {"x": 1, "x2": 1}
    onnx.checker.check_model(split.model)
    after = create_session(split.model.SerializeToString()).run(None, {"x": x})
    for want, got in zip(before, after):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    weights = {i.name: numpy_helper.to_array(i) for i in split.model.graph.initializer}
    assert not weights["w1"][2].any() and not weights["w2"][:, 2].any()  # the quantized part never sees them
    assert weights["w_shared"][2].any()  # a weight two MatMuls read is left whole (not split)
