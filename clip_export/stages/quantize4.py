"""Stage: weight-only 4-bit MatMul weights (onnxruntime MatMulNBits), transformers.js's "q4", with
the token embedding in 8- or 4-bit blocks (com.microsoft.GatherBlockQuantized), gated by verify
with its own thresholds like every other precision."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_export.core.conversion import (
    ConvertResult,
    Derivation,
    convert_each,
    matmul_nbits,
    save_model,
    set_precision_metadata,
    tool_version,
)
from clip_export.core.errors import ConversionError, import_optional
from clip_export.core.graph_surgery import int8_excluded_nodes
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import Q4_EMBEDDING_BITS, Q4_EMBEDDING_OPSET, Q4_SCHEME, Q4Scheme, artifact_file_name


def embedding_gathers(model: Any) -> list[str]:
    """Gather nodes that look rows up in a constant fp32 table of rank 2 (the token embedding, and
    any other embedding table a family's text tower has)."""
    from onnx import TensorProto

    tables = {t.name for t in model.graph.initializer if len(t.dims) == 2 and t.data_type == TensorProto.FLOAT}
    axis = {
        n.name: next((a.i for a in n.attribute if a.name == "axis"), 0)
        for n in model.graph.node
        if n.op_type == "Gather"
    }
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    # A table read by any other node (tied weights) stays float: replacing it would leave that node without it.
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Gather" and n.name and n.input[0] in tables and axis[n.name] == 0 and readers[n.input[0]] == 1
    ]


def _schema_changes(model: Any, source_opset: int) -> list[str]:
    """Default-domain ops whose schema at the raised opset differs beyond admitting new types."""
    from onnx import defs

    changed = []
    for op in sorted({n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}):
        old, new = defs.get_schema(op, source_opset), defs.get_schema(op, Q4_EMBEDDING_OPSET)
        if old.since_version != new.since_version and (
            sorted(old.attributes) != sorted(new.attributes)
            or [i.name for i in old.inputs] != [i.name for i in new.inputs]
        ):
            changed.append(f"{op} {old.since_version}→{new.since_version}")
    return changed


def _default_opset(model: Any) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _gather_8bit(model: Any, names: Sequence[str], block_size: int) -> None:
    """Each named Gather becomes GatherBlockQuantized over uint8 codes: symmetric blocks of
    `block_size` along the table's rows, one float scale each, zero point 128 (the op's default)."""
    import numpy as np
    from onnx import helper, numpy_helper

    initializers = {t.name: t for t in model.graph.initializer}
    for index, node in enumerate(list(model.graph.node)):
        if node.name not in names:
            continue
        table = initializers[node.input[0]]
        weights = numpy_helper.to_array(table).astype(np.float32)
        rows, width = weights.shape
        blocks = -(-width // block_size)
        padded = np.zeros((rows, blocks * block_size), np.float32)
        padded[:, :width] = weights
        padded = padded.reshape(rows, blocks, block_size)
        scales = np.abs(padded).max(axis=2, keepdims=True) / 127.0
        codes = np.clip(np.round(padded / np.where(scales == 0, 1.0, scales)), -127, 127) + 128
        data = numpy_helper.from_array(codes.reshape(rows, -1)[:, :width].astype(np.uint8), f"{table.name}_uint8")
        scale = numpy_helper.from_array(scales.reshape(rows, blocks).astype(np.float32), f"{table.name}_scales")
        model.graph.initializer.remove(table)
        model.graph.initializer.extend([data, scale])
        lookup = helper.make_node(
            "GatherBlockQuantized",
            [data.name, node.input[1], scale.name],
            list(node.output),
            name=f"{node.name}_q8",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=block_size,
            bits=8,
        )
        model.graph.node.remove(node)
        model.graph.node.insert(index, lookup)


def quantize_file(source: Path, target: Path, scheme: Q4Scheme = Q4_SCHEME) -> dict[str, Any]:
    """Write the 4-bit graph of one fp32 tower; returns what the manifest records of the conversion."""
    import onnx

    if scheme.embedding_bits not in Q4_EMBEDDING_BITS:
        raise ConversionError(
            f"embedding bits {scheme.embedding_bits} are not one of {', '.join(str(b) for b in Q4_EMBEDDING_BITS)}"
        )
    model = onnx.load(str(source))
    source_opset = _default_opset(model)
    excluded = int8_excluded_nodes(model)
    embeddings = embedding_gathers(model) if scheme.embedding_bits else []
    other_gathers = [n.name for n in model.graph.node if n.op_type == "Gather" and n.name not in embeddings]
    int4_embedding = bool(embeddings) and scheme.embedding_bits == 4
    if int4_embedding and source_opset < Q4_EMBEDDING_OPSET and (changed := _schema_changes(model, source_opset)):
        raise ConversionError(
            f"a 4-bit token embedding needs opset {Q4_EMBEDDING_OPSET}, where {', '.join(changed)} changed "
            f"meaning; export at opset {Q4_EMBEDDING_OPSET} or use 8-bit embedding"
        )
    quantized = matmul_nbits(
        model,
        bits=4,
        block_size=scheme.block_size,
        symmetric=scheme.symmetric,
        accuracy_level=scheme.accuracy_level,
        excluded=[*excluded, *other_gathers],
        purpose="4-bit quantization",
        op_types=("MatMul", "Gather") if int4_embedding else ("MatMul",),
    )
    if embeddings and scheme.embedding_bits == 8:
        _gather_8bit(quantized, embeddings, scheme.block_size)
        if not any(o.domain == "com.microsoft" for o in quantized.opset_import):
            quantized.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    gathers = sum(1 for n in quantized.graph.node if n.op_type == "GatherBlockQuantized")
    if gathers != len(embeddings):
        raise ConversionError(
            f"{source.name}: {gathers} GatherBlockQuantized nodes were written for {len(embeddings)} token embedding(s)"
        )
    set_precision_metadata(quantized, "q4")
    save_model(quantized, target)
    return {
        "tool": f"onnxruntime.quantization.matmul_nbits_quantizer {tool_version('onnxruntime')}",
        "bits": 4,
        "block_size": scheme.block_size,
        "symmetric": scheme.symmetric,
        "accuracy_level": scheme.accuracy_level,
        "matmul_nbits_nodes": sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits"),
        "embedding_bits": scheme.embedding_bits if embeddings else None,
        "gather_block_quantized_nodes": gathers,
        "opset": _default_opset(quantized),
        "excluded_nodes": excluded,
    }


def quantize_q4(
    model_dir: Path,
    *,
    towers: Sequence[str] = ("visual", "text"),
    scheme: Q4Scheme = Q4_SCHEME,
    force: bool = False,
    progress: Progress = silent,
) -> ConvertResult:
    """4-bit blockwise MatMul weights, a blockwise token embedding; activations, Conv, LayerNorm and the final projection stay float."""
    import_optional(
        "onnxruntime.quantization.matmul_nbits_quantizer",
        package="onnxruntime",
        extra="cpu",
        purpose="4-bit quantization",
    )
    return convert_each(
        model_dir,
        Derivation("q4", lambda path: artifact_file_name(path, "q4")),
        lambda source, target: quantize_file(source, target, scheme),
        towers=towers,
        force=force,
        progress=progress,
    )
