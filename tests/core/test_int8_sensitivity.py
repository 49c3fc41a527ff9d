from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic

from clip_export.core.int8_sensitivity import most_sensitive_first, sensitivity, weight_matmuls


def _two_matmuls() -> onnx.ModelProto:
    """x @ a @ b, where b has one outlier row that per-tensor 8-bit scales cannot hold."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((16, 16)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32) * 0.01
    b[3] = 50.0
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "a"], ["h"], name="first"),
            helper.make_node("MatMul", ["h", "b"], ["y"], name="second"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(a, "a"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_each_matmul_quantized_alone_ranks_the_outlier_weight_first(tmp_path: Path) -> None:
    model = _two_matmuls()
    assert weight_matmuls(model, ("MatMul",), ()) == ["first", "second"]
    assert weight_matmuls(model, ("MatMul",), ("first",)) == ["second"]
    inputs = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    import onnxruntime as ort

    (path := tmp_path / "fp32.onnx").write_bytes(model.SerializeToString())
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": inputs})[0]

    def quantize_only(name: str, target: Path) -> None:
        others = [n for n in ("first", "second") if n != name]
        quantize_dynamic(model, str(target), weight_type=QuantType.QUInt8, per_channel=False, nodes_to_exclude=others)

    error = sensitivity(["first", "second"], quantize_only, "x", inputs, expected, tmp_path)
    assert set(error) == {"first", "second"} and all(v > 0 for v in error.values())
    assert most_sensitive_first(error) == ["second", "first"]
    assert [p.name for p in tmp_path.iterdir()] == ["fp32.onnx"]  # its scratch folder is gone
