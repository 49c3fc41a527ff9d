"""Convert stage: the fp16 ONNX artifacts derived from the fp32 export, each gated by verify (INT8 is
stages/quantize8/, 4-bit stages/quantize4.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_export.core.conversion import (
    ConvertedArtifact,
    ConvertResult,
    Derivation,
    convert_each,
    save_model,
    set_precision_metadata,
    tool_version,
)
from clip_export.core.errors import ConversionError, import_optional
from clip_export.core.graph_surgery import final_nodes, fuse_attention, fuse_transformer_ops
from clip_export.core.onnx_files import external_data_files
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import artifact_file_name

__all__ = ["ConvertedArtifact", "ConvertResult", "convert_fp16", "to_fp16", "fuse_attention"]

# Ops kept in fp32 inside the fp16 graph, chosen by measurement (docs/convert.md): LayerNorm and
# its reductions overflow or lose the mean in fp16, Softmax loses small probabilities. The
# converter's own default list (ML and sequence ops) is kept as well, because passing a list
# replaces it.
FP16_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Erf")


def _onnx() -> Any:
    import onnx

    return onnx


def source_cast_to_float_nodes(model: Any) -> list[str]:
    """Cast(to=FLOAT) nodes: onnxconverter-common 1.15+ retypes their outputs to fp16 (its #320)."""
    onnx = _onnx()
    names = []
    for node in model.graph.node:
        if node.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute):
            names.append(node.name)
    return names


def fp32_nodes(model: Any, keep_final_fp32: bool = True) -> list[str]:
    """Nodes blocked from fp16 by name: source Cast(to=float), and the projection and pooling."""
    nodes = source_cast_to_float_nodes(model)
    if keep_final_fp32:
        nodes += [n for n in final_nodes(model) if n not in nodes]
    return nodes


def load_with_shapes(source: Path) -> tuple[Any, bool]:
    """(model, whether its shapes are already inferred). A tower stored with external data (over
    2 GiB) gets its shapes inferred file to file by onnx's infer_shapes_path, beside the source so
    the data resolves: onnxconverter-common infers them in memory, which serialises the whole model
    and fails past protobuf's 2 GiB ('Failed to serialize proto', ViT-H-14's image tower)."""
    import tempfile

    onnx = _onnx()
    if not external_data_files(source):
        return onnx.load(str(source)), False
    with tempfile.TemporaryDirectory(prefix=f".{source.stem}.shapes-", dir=source.parent) as scratch:
        inferred = Path(scratch) / source.name
        onnx.shape_inference.infer_shapes_path(str(source), str(inferred))
        model = onnx.load(str(inferred), load_external_data=False)
    onnx.external_data_helper.load_external_data_for_model(model, str(source.parent))
    return model, True


def to_fp16(
    model: Any, *, extra_fp32_ops: Sequence[str] = (), keep_final_fp32: bool = True, shapes_inferred: bool = False
) -> tuple[Any, dict[str, Any]]:
    """Convert float tensors to fp16 with fp32 I/O and the fragile ops blocked."""
    float16 = import_optional(
        "onnxconverter_common.float16", package="onnxconverter-common", extra="cpu", purpose="fp16 conversion"
    )
    import warnings

    ops = list(dict.fromkeys([*float16.DEFAULT_OP_BLOCK_LIST, *FP16_FP32_OPS, *extra_fp32_ops]))
    nodes = fp32_nodes(model, keep_final_fp32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one warning per clipped constant: thousands of lines
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, disable_shape_infer=shapes_inferred, op_block_list=ops, node_block_list=nodes
        )
    _restore_fp32_outputs(converted)
    return converted, {
        "tool": f"onnxconverter-common {getattr(float16, '__version__', '') or tool_version('onnxconverter-common')}",
        "keep_io_types": True,
        "fp32_ops": [o for o in ops if o not in float16.DEFAULT_OP_BLOCK_LIST],
        "fp32_nodes": nodes,
    }


def _restore_fp32_outputs(model: Any) -> None:
    """keep_io_types is not honoured when a blocked node feeds a graph output: the converter then
    appends a Cast to fp16. Point such casts back at fp32 so callers keep float32 outputs."""
    onnx = _onnx()
    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        node = producers.get(output.name)
        if node is None or node.op_type != "Cast":
            raise ConversionError(
                f"fp16 conversion left output {output.name} as {onnx.TensorProto.DataType.Name(tensor_type.elem_type)}"
            )
        for attribute in node.attribute:
            if attribute.name == "to":
                attribute.i = onnx.TensorProto.FLOAT
        tensor_type.elem_type = onnx.TensorProto.FLOAT


def fused_fp16(source: Path, extra_fp32_ops: Sequence[str] = ()) -> tuple[Any, dict[str, Any]]:
    """Fuse with onnxruntime's transformer optimizer, then convert with its fp16 pass, which knows
    the fused contrib ops (onnxconverter-common cannot infer their shapes)."""
    import warnings

    onnx = _onnx()
    model = onnx.load(str(source))
    attention = fuse_attention(model)
    optimized, fusions = fuse_transformer_ops(model)
    if attention:
        fusions["MultiHeadAttention (clip-export)"] = attention
    ops = [*FP16_FP32_OPS, "SkipLayerNormalization", *extra_fp32_ops]
    nodes = fp32_nodes(optimized.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized.convert_float_to_float16(keep_io_types=True, op_block_list=ops, node_block_list=nodes)
    _restore_fp32_outputs(optimized.model)
    return optimized.model, {
        "tool": f"onnxruntime.transformers {tool_version('onnxruntime')}",
        "keep_io_types": True,
        "fp32_ops": ops,
        "fp32_nodes": nodes,
        "fusions": fusions,
    }


def convert_fp16(
    model_dir: Path,
    *,
    towers: Sequence[str] = ("visual", "text"),
    force: bool = False,
    fuse: bool = False,
    extra_fp32_ops: Sequence[str] = (),
    progress: Progress = silent,
) -> ConvertResult:
    """fp16 weights and compute with fp32 inputs/outputs; fragile ops stay fp32."""

    def write(source: Path, target: Path) -> dict[str, Any]:
        if fuse:
            converted, details = fused_fp16(source, extra_fp32_ops)
        else:
            model, inferred = load_with_shapes(source)
            converted, details = to_fp16(model, extra_fp32_ops=extra_fp32_ops, shapes_inferred=inferred)
        set_precision_metadata(converted, "fp16")
        save_model(converted, target)
        return {**details, "fused": fuse}

    return convert_each(
        model_dir,
        Derivation("fp16", lambda path: artifact_file_name(path, "fp16")),
        write,
        towers=towers,
        force=force,
        progress=progress,
    )
