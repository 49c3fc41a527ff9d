"""Graph surgery on exported ONNX towers: our attention fusion, onnxruntime's transformer
optimizer, and the nodes a conversion keeps in float. Shared by the fp16, INT8 and q4 stages and
bench's fused baseline, so no stage imports another. Every rewritten graph is verified like any
other artifact before it ships."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_export.core.errors import ConversionError, import_optional


def _constant(model: Any, name: str) -> Any:
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def fuse_attention(model: Any) -> int:
    """Replace each attention block of the export with one com.microsoft.MultiHeadAttention.

    The export traces attention batch-first (clip_export.core.attention): packed QKV → Reshape
    [B, L, 3, H, d] → Transpose [2, 0, 3, 1, 4] → Slice+Squeeze into q, k, v → Mul(q, scale) ·
    Transpose(k) → (mask Add) → Softmax → · v → Transpose [0, 2, 1, 3] → Reshape [B, L, D].
    onnxruntime's own fusions do not recognise it. A block is rewritten only when every piece
    matches: q, k and v are parts 0, 1 and 2 of one head split, and the head size in the split
    agrees with the scale. The converted artifact is then verified like any other, so a wrong
    rewrite cannot ship.
    """
    import numpy as np
    from onnx import TensorProto, helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def only_consumer(name: str, op_type: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def has_perm(node: Any, perm: list[int]) -> bool:
        return [list(a.ints) for a in node.attribute if a.name == "perm"] == [perm]

    def made_by(name: str, op_type: str, perm: list[int] | None = None) -> Any:
        node = producer.get(name)
        if node is None or node.op_type != op_type or (perm is not None and not has_perm(node, perm)):
            return None
        return node

    def scalar(name: str) -> float | None:
        value = _constant(model, name)
        return float(np.asarray(value).reshape(-1)[0]) if value is not None and np.asarray(value).size == 1 else None

    def head_part(name: str) -> tuple[str, int] | None:
        """(the head split it comes from, which part) for Squeeze(Slice(split, [i], [i + 1]), axis 0)."""
        squeeze = made_by(name, "Squeeze")
        part = made_by(squeeze.input[0], "Slice") if squeeze is not None and len(squeeze.input) > 1 else None
        if (
            part is None
            or scalar(squeeze.input[1]) != 0
            or len(part.input) > 4
            or (len(part.input) == 4 and scalar(part.input[3]) != 0)
        ):
            return None
        start, stop = scalar(part.input[1]), scalar(part.input[2])
        return (part.input[0], int(start)) if start is not None and stop == start + 1 else None

    def split_shape(name: str) -> list[int] | None:
        """[B, L, 3, H, d] of the head split: a constant, or (a text graph that cuts its padding
        has a sequence length known only at run time) a Concat whose last three parts are."""
        shape = _constant(model, name)
        if shape is not None:
            return [int(v) for v in np.asarray(shape).reshape(-1)] if np.asarray(shape).shape == (5,) else None
        concat = made_by(name, "Concat")
        tail = [scalar(part) for part in concat.input[2:]] if concat is not None and len(concat.input) == 5 else []
        return [0, 0, *[int(v) for v in tail]] if len(tail) == 3 and None not in tail else None

    def rank(name: str) -> int | None:
        """The rank of an attention mask: a constant's, or that of the constant a Slice cuts it from."""
        value = _constant(model, name)
        if value is not None:
            return int(np.ndim(value))
        cut = made_by(name, "Slice")
        return rank(cut.input[0]) if cut is not None else None

    added: list[Any] = []
    for index, softmax in enumerate([n for n in graph.node if n.op_type == "Softmax"]):
        context = only_consumer(softmax.output[0], "MatMul")
        back = (
            only_consumer(context.output[0], "Transpose")
            if context is not None and context.input[0] == softmax.output[0]
            else None
        )
        if back is None or not has_perm(back, [0, 2, 1, 3]):
            continue
        merge = only_consumer(back.output[0], "Reshape")
        scores, mask = producer.get(softmax.input[0]), None
        if scores is not None and scores.op_type == "Add":
            mask, scores = scores.input[1], producer.get(scores.input[0])
        if merge is None or scores is None or scores.op_type != "MatMul":
            continue
        q_mul, k_t = made_by(scores.input[0], "Mul"), made_by(scores.input[1], "Transpose", [0, 1, 3, 2])
        scale = scalar(q_mul.input[1]) if q_mul is not None else None
        if scale is None or k_t is None:
            continue
        parts = [head_part(q_mul.input[0]), head_part(k_t.input[0]), head_part(context.input[1])]
        if any(p is None for p in parts) or len({p[0] for p in parts}) != 1 or [p[1] for p in parts] != [0, 1, 2]:
            continue
        split = made_by(parts[0][0], "Transpose", [2, 0, 3, 1, 4])
        view = made_by(split.input[0], "Reshape") if split is not None else None
        shape = split_shape(view.input[1]) if view is not None else None
        if shape is None or int(shape[2]) != 3:
            continue
        heads, head_dim = int(shape[3]), int(shape[4])
        if heads < 1 or head_dim < 1 or abs(scale - head_dim**-0.5) > 1e-6 * head_dim**-0.5:
            continue
        mask_rank = rank(mask) if mask else 0
        if mask and mask_rank not in (2, 4):  # MultiHeadAttention takes a [B|1, H|1, L, S] bias
            continue
        prefix = f"clip_export_mha_{index}"
        sizes = helper.make_tensor(f"{prefix}_sizes", TensorProto.INT64, [3], [heads * head_dim] * 3)
        added.append(helper.make_node("Constant", [], [f"{prefix}_sizes"], value=sizes, name=f"{prefix}_sizes"))
        if mask_rank == 2:
            axes = helper.make_tensor(f"{prefix}_mask_axes", TensorProto.INT64, [2], [0, 1])
            added.append(
                helper.make_node("Constant", [], [f"{prefix}_mask_axes"], value=axes, name=f"{prefix}_mask_axes")
            )
            added.append(
                helper.make_node("Unsqueeze", [mask, f"{prefix}_mask_axes"], [f"{prefix}_mask"], name=f"{prefix}_mask")
            )
            mask = f"{prefix}_mask"
        added.append(
            helper.make_node(
                "Split",
                [view.input[0], f"{prefix}_sizes"],
                [f"{prefix}_q", f"{prefix}_k", f"{prefix}_v"],
                axis=-1,
                name=f"{prefix}_qkv",
            )
        )
        inputs = [f"{prefix}_q", f"{prefix}_k", f"{prefix}_v"] + (["", "", mask] if mask else [])
        added.append(
            helper.make_node(
                "MultiHeadAttention",
                inputs,
                [merge.output[0]],
                domain="com.microsoft",
                num_heads=heads,
                scale=scale,
                name=prefix,
            )
        )
        merge.output[0] = f"{prefix}_replaced"
    if not added:
        return 0
    graph.node.extend(added)
    _remove_dead_nodes_and_sort(graph)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return sum(1 for n in added if n.op_type == "MultiHeadAttention")


def _remove_dead_nodes_and_sort(graph: Any) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, pending = [], list(graph.node)
    while pending:
        ready = [node for node in pending if all(name in known for name in node.input)]
        if not ready:
            raise ConversionError("attention fusion left a cycle in the graph")
        for node in ready:
            ordered.append(node)
            known.update(node.output)
            pending.remove(node)
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for node in graph.node for name in node.input}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)


def fuse_transformer_ops(source: Path | Any) -> tuple[Any, dict[str, int]]:
    """onnxruntime's transformer optimizer; returns the optimizer's model wrapper and what it fused."""
    optimize_model = import_optional(
        "onnxruntime.transformers.optimizer", package="onnxruntime", extra="cpu", purpose="--fuse"
    ).optimize_model
    import logging

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    optimized = optimize_model(
        str(source) if isinstance(source, Path) else source, model_type="clip", num_heads=0, hidden_size=0, opt_level=0
    )
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return optimized, stats


def final_nodes(model: Any, depth: int = 2) -> list[str]:
    """The last nodes before the output (projection and norm), kept in fp32 by default."""
    producers = {out: node for node in model.graph.node for out in node.output}
    chosen: list[str] = []
    frontier = [o.name for o in model.graph.output]
    for _ in range(depth):
        next_frontier = []
        for tensor in frontier:
            node = producers.get(tensor)
            if node is not None and node.name not in chosen:
                chosen.append(node.name)
                next_frontier.extend(node.input)
        frontier = next_frontier
    return chosen


def int8_excluded_nodes(model: Any) -> list[str]:
    """The final projection stays float: measured to cost retrieval agreement (docs/convert.md)."""
    return final_nodes(model, depth=1)


# onnxruntime's dynamic quantizer rewrites every Gemm into a MatMul named `<name>` + this suffix
# (and an Add for the bias) before it reads nodes_to_exclude (ONNXModel.replace_gemm_with_matmul).
GEMM_AS_MATMUL_SUFFIX = "_MatMul"


def quantizer_exclusions(model: Any, names: Sequence[str]) -> list[str]:
    """The names quantize_dynamic must be told to skip `names`: a Gemm excluded by its own name was
    quantized anyway, since the quantizer renames it first. That is how MobileCLIP's projection (a
    timm Linear, so a Gemm) got quantized and failed the gate (docs/models.md)."""
    gemms = {n.name for n in model.graph.node if n.op_type == "Gemm"}
    expanded = [
        alias for name in names for alias in ((name, name + GEMM_AS_MATMUL_SUFFIX) if name in gemms else (name,))
    ]
    return list(dict.fromkeys(expanded))


def require_nodes(graphs: Sequence[Path], names: Sequence[str]) -> None:
    """ConversionError for a name that is a node of none of `graphs` (read without their weights):
    onnxruntime's quantizer ignores a misspelt --exclude silently and quantizes the node anyway."""
    if not names:
        return
    onnx = import_optional("onnx", package="onnx", extra="cpu", purpose="reading ONNX graphs")
    nodes = {n.name: n.op_type for path in graphs for n in onnx.load(str(path), load_external_data=False).graph.node}
    unknown = [name for name in names if name not in nodes]
    if unknown:
        weighted = sorted(n for n, op in nodes.items() if op in ("MatMul", "Gemm"))
        raise ConversionError(
            f"--exclude names no node of {', '.join(p.name for p in graphs)}: {', '.join(unknown)}; "
            f"their {len(weighted)} MatMul/Gemm nodes include {', '.join(weighted[:4])}{', …' if len(weighted) > 4 else ''}"
        )
