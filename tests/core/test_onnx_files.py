from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from clip_export.core.onnx_files import external_data_files, inline_external_data


def _external_model(tmp_path: Path) -> tuple[Path, np.ndarray]:
    weight = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(weight, "w")],
    )
    path = tmp_path / "tower.onnx"
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="tower.onnx.data",
        size_threshold=0,
    )
    return path, weight


def test_external_data_is_named_then_inlined_into_one_file(tmp_path: Path) -> None:
    path, weight = _external_model(tmp_path)
    assert external_data_files(path) == ["tower.onnx.data"]
    inline_external_data(path)
    assert not (tmp_path / "tower.onnx.data").exists()  # inlined, then removed
    assert external_data_files(path) == []
    x = np.ones((2, 64), np.float32)
    (y,) = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_allclose(y, x @ weight, rtol=1e-5)
