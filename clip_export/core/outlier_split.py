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
from clip_export.core.runner import open_graph
from clip_export.core.sessions import SessionOptions
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


def _splittable(node: Any, weights: Mapping[str, Any], uses: Mapping[str, int], names: Mapping[str, int]) -> bool:
    """A MatMul/Gemm with a name of its own (the new nodes are placed by it), whose weight is a matrix
    initializer only it reads (its rows get zeroed), and whose activation is not transposed or
    scaled, so its last axis holds the channels."""
    if not node.name or names[node.name] != 1:
        return False
    if len(node.input) < 2 or node.input[1] not in weights or uses[node.input[1]] != 1:
        return False
    if len(weights[node.input[1]].dims) != 2:
        return False
    if node.op_type == "MatMul":
        return True
    attrs = {a.name: a for a in node.attribute}
    plain_a = "transA" not in attrs or attrs["transA"].i == 0
    return node.op_type == "Gemm" and plain_a and ("alpha" not in attrs or attrs["alpha"].f == 1.0)


def weight_consumers(model: Any, candidates: Sequence[str]) -> dict[str, list[Any]]:
    """Activation tensor → the candidate weight MatMuls/Gemms reading it, where the split can be applied."""
    weights = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}  # how many nodes read each tensor
    names: dict[str, int] = {}  # how many nodes carry each name
    for node in model.graph.node:
        names[node.name] = names.get(node.name, 0) + 1
        for tensor in node.input:
            uses[tensor] = uses.get(tensor, 0) + 1
    wanted = set(candidates)
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.name in wanted and _splittable(node, weights, uses, names):
            consumers.setdefault(node.input[0], []).append(node)
    return consumers


def channel_ranges(
    model: Any, tensors: Sequence[str], input_name: str, inputs: np.ndarray, scratch_dir: Path
) -> dict[str, np.ndarray]:
    """max |x_k| per last-axis channel of each named tensor, over `inputs` run one at a time (as served).
    `model` is used up: the tensors become graph outputs (no second copy of a large tower's weights)."""
    onnx = _onnx()
    for name in tensors:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    ranges: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix=".int8-ranges-", dir=scratch_dir) as scratch:
        path = Path(scratch) / "probe.onnx"
        save_model(model, path)
        session = open_graph(path, SessionOptions(prepacking=False)).session
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
    rule.max_share of them (at least one); tensors without any are left out."""
    chosen: dict[str, np.ndarray] = {}
    for name, widths in ranges.items():
        median = float(np.median(widths))
        if median <= 0.0:  # a mostly-zero tensor has no typical width for a channel to stand out from
            continue
        limit = rule.ratio * median
        widest = [int(k) for k in np.argsort(-widths)[: max(1, int(len(widths) * rule.max_share))] if widths[k] > limit]
        if widest:
            chosen[name] = np.array(sorted(widest), np.int64)
    return chosen


def measure_outlier_channels(
    model: Any,
    candidates: Sequence[str],
    input_name: str,
    inputs: np.ndarray,
    rule: Int8OutlierSplit,
    scratch_dir: Path,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the channels `rule` splits off each input of the `candidates` MatMuls, every such input's measured
    ranges), measured on `inputs`: what the INT8 stage and benchmarks/int8_trained.py both ask.
    `model` is used up by the measurement."""
    ranges = channel_ranges(model, list(weight_consumers(model, candidates)), input_name, inputs, scratch_dir)
    return outlier_channels(ranges, rule), ranges


def split_outlier_channels(model: Any, candidates: Sequence[str], channels: Mapping[str, np.ndarray]) -> OutlierSplit:
    """Rewrite `model` in place: each of the `candidates` MatMuls/Gemms reading a tensor with outlier
    `channels` reads it with those channels zeroed (its weight rows zeroed too), and a float MatMul of
    just those channels by their rows is added to its output."""
    onnx = _onnx()
    consumers = weight_consumers(model, candidates)
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    weights = {i.name: i for i in model.graph.initializer}
    before: dict[str, list[Any]] = {}
    after: dict[str, list[Any]] = {}
    float_matmuls: list[str] = []
    for tensor, index in channels.items():
        nodes = consumers[tensor]
        mask = np.ones(_reduction_width(nodes[0], weights[nodes[0].input[1]].dims), np.float32)
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
            transposed = _transposed_weight(node)
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


def _transposed_weight(node: Any) -> bool:
    """A Gemm with transB=1 holds its weight as [N, K]: the channels are its columns."""
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def _reduction_width(node: Any, weight_shape: Sequence[int]) -> int:
    """K, the channels of the activation the weight multiplies."""
    return int(weight_shape[1] if _transposed_weight(node) else weight_shape[0])
