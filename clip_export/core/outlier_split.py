"""Outlier channels split off INT8 weight MatMuls. Trained transformers carry a few activation
channels far wider than the rest (MiniLM-L6's FFN inputs reach 17-19x their median channel), and
onnxruntime's dynamic quantization gives each activation tensor one scale, so those few cost every
other channel its resolution. Here the channels measured wide on calibration inputs are zeroed in
the quantized MatMul's input and multiplied by their own weight rows in float beside it, the two
parts added: an identity in float (LLM.int8()'s decomposition, with the channels chosen once).
Measurements: docs/convert.md."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.conversion import save_model
from clip_export.core.errors import import_optional
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.core.spec import Int8OutlierSplit


@dataclass(frozen=True)
class OutlierSplit:
    """The rewritten fp32 graph, the float MatMuls that carry the outlier channels (to leave unquantized),
    and how many channels were split off each activation tensor."""

    model: Any
    float_matmuls: tuple[str, ...]
    channels: Mapping[str, int]


def _onnx() -> Any:
    return import_optional("onnx", package="onnx", extra="cpu", purpose="splitting outlier channels")


def _splittable(node: Any, weights: Mapping[str, Any], uses: Mapping[str, int]) -> bool:
    """A MatMul/Gemm whose weight is an initializer only it reads (its rows get zeroed) and whose
    activation is not transposed or scaled, so its columns are the channels."""
    if len(node.input) < 2 or node.input[1] not in weights or uses[node.input[1]] != 1:
        return False
    if node.op_type == "MatMul":
        return True
    attrs = {a.name: a for a in node.attribute}
    plain_a = "transA" not in attrs or attrs["transA"].i == 0
    return node.op_type == "Gemm" and plain_a and ("alpha" not in attrs or attrs["alpha"].f == 1.0)


def weight_consumers(model: Any, candidates: Sequence[str]) -> dict[str, list[Any]]:
    """Activation tensor → the candidate weight MatMuls/Gemms reading it, where the split can be applied."""
    weights = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    wanted = set(candidates)
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.name in wanted and _splittable(node, weights, uses):
            consumers.setdefault(node.input[0], []).append(node)
    return consumers


def channel_ranges(model: Any, tensors: Sequence[str], input_name: str, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """max |x_k| per last-axis channel of each named tensor, over `inputs` run one at a time (as served)."""
    onnx = _onnx()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in tensors:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    ranges: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix=".int8-ranges-") as scratch:
        path = Path(scratch) / "probe.onnx"
        save_model(probe, path)
        session = create_session(path, SessionOptions(prepacking=False))
        names = [o.name for o in session.get_outputs()]
        for item in range(len(inputs)):
            outputs = dict(zip(names, session.run(None, {input_name: inputs[item : item + 1]})))
            for name in tensors:
                value = outputs[name]
                seen = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
                ranges[name] = np.maximum(ranges[name], seen) if name in ranges else seen
    return ranges


def outlier_channels(ranges: Mapping[str, np.ndarray], rule: Int8OutlierSplit) -> dict[str, np.ndarray]:
    """Per tensor, the channels wider than rule.ratio x its median channel, widest first, at most
    rule.max_share of them; tensors without any are left out."""
    chosen: dict[str, np.ndarray] = {}
    for name, widths in ranges.items():
        limit = rule.ratio * float(np.median(widths))
        widest = [int(k) for k in np.argsort(-widths)[: max(1, int(len(widths) * rule.max_share))] if widths[k] > limit]
        if widest:
            chosen[name] = np.array(sorted(widest), np.int64)
    return chosen


def split_outlier_channels(
    model: Any, consumers: Mapping[str, list[Any]], channels: Mapping[str, np.ndarray]
) -> OutlierSplit:
    """Rewrite `model` in place: each MatMul/Gemm reading a tensor with outlier `channels` reads it with
    those channels zeroed (its weight rows zeroed too), and a float MatMul of just those channels
    by their rows is added to its output."""
    onnx = _onnx()
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    weights = {i.name: i for i in model.graph.initializer}
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    float_matmuls: list[str] = []
    for tensor, index in channels.items():
        nodes = consumers[tensor]
        width = numpy_helper.to_array(weights[nodes[0].input[1]]).shape  # [K, N], or [N, K] for Gemm transB
        mask = np.ones(_reduction_width(nodes[0], width), np.float32)
        mask[index] = 0.0
        inliers, outliers = f"{tensor}/inliers", f"{tensor}/outliers"
        model.graph.initializer.extend(
            [
                numpy_helper.from_array(mask, f"{tensor}/inlier_mask"),
                numpy_helper.from_array(index, f"{tensor}/outlier_index"),
            ]
        )
        before[nodes[0].name] = [
            helper.make_node("Mul", [tensor, f"{tensor}/inlier_mask"], [inliers], name=inliers),
            helper.make_node("Gather", [tensor, f"{tensor}/outlier_index"], [outliers], name=outliers, axis=-1),
        ]
        for node in nodes:
            weight = numpy_helper.to_array(weights[node.input[1]])
            transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            rows = (weight[:, index].T if transposed else weight[index, :]).copy()
            kept = weight.copy()
            if transposed:
                kept[:, index] = 0.0
            else:
                kept[index, :] = 0.0
            weights[node.input[1]].CopyFrom(numpy_helper.from_array(kept, node.input[1]))
            model.graph.initializer.append(numpy_helper.from_array(rows, f"{node.name}/outlier_rows"))
            output = node.output[0]
            node.input[0], node.output[0] = inliers, f"{output}/inlier_part"
            float_matmul = f"{node.name}/outlier_matmul"
            after[node.name] = [
                helper.make_node(
                    "MatMul", [outliers, f"{node.name}/outlier_rows"], [f"{output}/outlier_part"], name=float_matmul
                ),
                helper.make_node(
                    "Add",
                    [f"{output}/inlier_part", f"{output}/outlier_part"],
                    [output],
                    name=f"{node.name}/outlier_add",
                ),
            ]
            float_matmuls.append(float_matmul)
    ordered = [
        new for node in model.graph.node for new in (*before.get(node.name, []), node, *after.get(node.name, []))
    ]
    del model.graph.node[:]
    model.graph.node.extend(ordered)
    return OutlierSplit(model, tuple(float_matmuls), {t: len(i) for t, i in channels.items()})


def _reduction_width(node: Any, weight_shape: Sequence[int]) -> int:
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return int(weight_shape[1] if transposed else weight_shape[0])
