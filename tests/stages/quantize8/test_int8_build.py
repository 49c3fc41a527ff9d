"""What every INT8 file is made by: the quantizer calls and what they are told to leave float."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clip_export.core.graph_surgery import quantizer_exclusions
from clip_export.stages.quantize8.int8_build import INT8_OP_TYPES


def test_an_excluded_gemm_stays_float_although_the_quantizer_renames_it(tmp_path: Path) -> None:
    """quantize_dynamic turns Gemm `proj` into MatMul `proj_MatMul` before reading nodes_to_exclude."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="proj", transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantizer_exclusions(model, ["proj", "other"]) == ["proj", "proj_MatMul", "other"]
    quantized_ops = {}
    for label, excluded in (("by name", ["proj"]), ("with its alias", quantizer_exclusions(model, ["proj"]))):
        quantize_dynamic(
            model,
            str(tmp_path / "q.onnx"),
            weight_type=QuantType.QUInt8,
            op_types_to_quantize=list(INT8_OP_TYPES),
            nodes_to_exclude=excluded,
        )
        quantized_ops[label] = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in quantized_ops["by name"]  # the quantizer's behaviour this works around
    assert not quantized_ops["with its alias"] & {"MatMulInteger", "DynamicQuantizeMatMul"}
