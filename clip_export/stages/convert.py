"""Convert stage: fp16 and INT8 ONNX artifacts derived from the fp32 export, each gated by verify."""

from __future__ import annotations

import dataclasses
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
from clip_export.core.environment import current_environment
from clip_export.core.errors import ConversionError, import_optional
from clip_export.core.graph_surgery import (
    final_nodes,
    fuse_attention,
    fuse_transformer_ops,
    int8_excluded_nodes,
    quantizer_exclusions,
    require_nodes,
)
from clip_export.core.int8_sensitivity import most_sensitive_first, sensitivity, weight_matmuls
from clip_export.core.manifest import exclusive, intact_reference, read_manifest, resolve_inside, write_manifest
from clip_export.core.onnx_files import external_data_files
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import (
    CPU_PROVIDER,
    INT8_FAMILIES,
    INT8_MIXED_MAX_FLOAT_SHARE,
    INT8_SENSITIVITY_ITEMS,
    ONNX_FORMAT,
    TOWERS,
    Int8Family,
    Int8Scheme,
    artifact_file_name,
    int8_family_for_weight_type,
)

__all__ = ["ConvertedArtifact", "ConvertResult", "convert_fp16", "quantize_int8", "to_fp16", "fuse_attention"]

# Ops kept in fp32 inside the fp16 graph, chosen by measurement (docs/convert.md): LayerNorm and
# its reductions overflow or lose the mean in fp16, Softmax loses small probabilities. The
# converter's own default list (ML and sequence ops) is kept as well, because passing a list
# replaces it.
FP16_FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSumSquare", "ReduceL2", "Pow", "Sqrt", "Erf")
# MatMul/Gemm weights are quantized; the rest (Conv patch embedding, attention score MatMuls
# between two activations) stays float. See docs/convert.md for the measurements.
INT8_OP_TYPES = ("MatMul", "Gemm")


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


def quantize_weights(model: Any, target: Path, scheme: Int8Scheme, excluded: Sequence[str]) -> None:
    """onnxruntime's dynamic quantization of the MatMul/Gemm weights of `model` (rewritten in place) with
    `scheme`, leaving `excluded` float: the one call every INT8 file here is made by."""
    import logging

    quantization = import_optional(
        "onnxruntime.quantization", package="onnxruntime", extra="cpu", purpose="INT8 quantization"
    )
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer advises pre-processing through the root logger
    quantization.quantize_dynamic(
        model,
        str(target),
        weight_type=getattr(quantization.QuantType, scheme.weight_type),
        per_channel=scheme.per_channel,
        reduce_range=scheme.reduce_range,
        op_types_to_quantize=list(INT8_OP_TYPES),
        nodes_to_exclude=list(excluded),
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_int8(
    model_dir: Path,
    *,
    towers: Sequence[str] = ("visual", "text"),
    per_channel: bool | None = None,
    exclude_nodes: Sequence[str] = (),
    force: bool = False,
    scheme: Int8Scheme | None = None,
    progress: Progress = silent,
) -> ConvertResult:
    """Dynamic INT8 quantization of MatMul/Gemm weights for CPU serving. Without `scheme`, one
    artifact per kernel family (spec.INT8_FAMILIES): QInt8 for VNNI/AMX CPUs, QUInt8 for every x86
    tier; the VNNI one is skipped, with a note, on a CPU that cannot verify it. With `scheme`, that
    one scheme, named by its weight type's family. `per_channel`, when given, overrides the scheme's."""
    families = (
        [(family, family.scheme) for family in INT8_FAMILIES.values()]
        if scheme is None
        else [(int8_family_for_weight_type(scheme.weight_type), scheme)]
    )
    manifest = read_manifest(model_dir)
    sources = manifest.select(precision="fp32", format=ONNX_FORMAT, tower=tuple(towers))
    require_nodes([resolve_inside(Path(model_dir), s.path, "the source artifact") for s in sources], exclude_nodes)
    here = current_environment(CPU_PROVIDER)
    artifacts: list[ConvertedArtifact] = []
    notes: list[str] = []
    failed: dict[str, list[str]] = {}
    for family, chosen in families:
        if per_channel is not None:
            chosen = dataclasses.replace(chosen, per_channel=per_channel)
        if not family.applies_to(here.isa_flags):
            notes.append(
                f"{family.file_tag} ({chosen.label}, for {family.tiers}) not built: this CPU ({here.tier}) "
                "cannot verify it"
            )
            continue
        for tower in towers:  # a tower that fails one family's gate keeps the other family and the other tower
            try:
                result = _quantize_family(model_dir, [tower], chosen, family, exclude_nodes, force, progress)
            except ConversionError as exc:
                if "failed verification" not in str(exc):
                    raise
                result, how = _mixed_precision(
                    model_dir, tower, chosen, family, exclude_nodes, force, progress, str(exc)
                )
                notes.append(f"{tower}: {family.file_tag} ({chosen.label}) {how}")
                if result is None:
                    failed.setdefault(tower, []).append(f"{chosen.label}: {exc}")
                    continue
            artifacts += result.artifacts
    built = {a.tower for a in artifacts}
    if failed and not built:
        raise ConversionError(
            "the int8 gate failed for every tower and scheme: " + " | ".join(sum(failed.values(), []))
        )
    _record_towers_without_int8(Path(model_dir), {t: "; ".join(w) for t, w in failed.items() if t not in built}, built)
    return ConvertResult(Path(model_dir), "int8", tuple(artifacts), tuple(notes))


def _record_towers_without_int8(model_dir: Path, why: dict[str, str], built: set[str]) -> None:
    """manifest["int8_not_built"]: tower → why no INT8 scheme held its gate (the model card says so);
    a tower that got an INT8 artifact now is taken off."""
    with exclusive(model_dir):
        manifest = read_manifest(model_dir)
        record = {t: w for t, w in (manifest.section("int8_not_built") or {}).items() if t not in built}
        record.update(why)
        if record == (manifest.section("int8_not_built") or {}):
            return
        if record:
            manifest.set_section("int8_not_built", record)
        else:
            manifest.drop_section("int8_not_built")
        write_manifest(model_dir, manifest)


def _mixed_precision(
    model_dir: Path,
    tower: str,
    scheme: Int8Scheme,
    family: Int8Family,
    exclude_nodes: Sequence[str],
    force: bool,
    progress: Progress,
    plain_failure: str,
) -> tuple[ConvertResult | None, str]:
    """After the plain scheme failed the gate: measure each weight MatMul's error quantized alone
    (the rest float) on the first INT8_SENSITIVITY_ITEMS reference inputs, then keep the most
    sensitive in float, one more at a time, until the unchanged gate passes or
    INT8_MIXED_MAX_FLOAT_SHARE of them would stay float. (result or None, a line saying what happened)."""
    import numpy as np

    manifest = read_manifest(model_dir)
    source = manifest.select(precision="fp32", format=ONNX_FORMAT, tower=tower)[0]
    model = _onnx().load(str(resolve_inside(model_dir, source.path, "the source artifact")))
    base = [*int8_excluded_nodes(model), *exclude_nodes]
    candidates = weight_matmuls(model, INT8_OP_TYPES, base)
    _, reference = intact_reference(model_dir, manifest, "the sensitivity's reference", f"{model_dir} has no reference")
    with np.load(reference) as data:
        spec = TOWERS[tower]
        inputs, expected = (data[name][:INT8_SENSITIVITY_ITEMS] for name in (spec.input_name, spec.output_name))

    def quantize_only(name: str, target: Path) -> None:
        fresh = _onnx().ModelProto()
        fresh.CopyFrom(model)  # the quantizer rewrites the graph it is given (Gemm → MatMul)
        quantize_weights(
            fresh, target, scheme, quantizer_exclusions(model, [*base, *(c for c in candidates if c != name)])
        )

    progress(f"{tower} {scheme.label} failed its gate; measuring {len(candidates)} MatMuls' sensitivity")
    error = sensitivity(candidates, quantize_only, spec.input_name, inputs, expected, model_dir)
    order = most_sensitive_first(error)
    limit = max(1, int(len(candidates) * INT8_MIXED_MAX_FLOAT_SHARE))
    for count in range(1, limit + 1):
        kept = order[:count]
        details = {
            "float_matmuls": kept,
            "weight_matmuls": len(candidates),
            "chosen_by": f"mean |Δ| of each MatMul quantized alone on {len(inputs)} reference inputs, most sensitive "
            "kept float until the gate passed",
            "sensitivity": {name: error[name] for name in kept},
            "plain_failure": plain_failure,
        }
        try:
            result = _quantize_family(
                model_dir,
                [tower],
                scheme,
                family,
                [*exclude_nodes, *kept],
                force,
                progress,
                {"mixed_precision": details},
            )
        except ConversionError as exc:
            if "failed verification" not in str(exc):
                raise
            continue
        return (
            result,
            f"failed its gate plain; kept with {count} of {len(candidates)} MatMuls float (mixed precision "
            "by measured sensitivity)",
        )
    return None, (
        f"not kept: {plain_failure}; with up to {limit} of {len(candidates)} MatMuls float "
        "(most sensitive first) it still failed"
    )


def _quantize_family(
    model_dir: Path,
    towers: Sequence[str],
    scheme: Int8Scheme,
    family: Int8Family,
    exclude_nodes: Sequence[str],
    force: bool,
    progress: Progress,
    extra: dict[str, Any] | None = None,
) -> ConvertResult:
    onnx = _onnx()

    def write(source: Path, target: Path) -> dict[str, Any]:
        model = onnx.load(str(source))
        excluded = quantizer_exclusions(model, [*int8_excluded_nodes(model), *exclude_nodes])
        quantize_weights(model, target, scheme, excluded)
        quantized = onnx.load(str(target))
        set_precision_metadata(quantized, "int8")
        onnx.save_model(quantized, str(target))
        return {
            "tool": f"onnxruntime.quantization {tool_version('onnxruntime')}",
            "mode": "dynamic",
            "weight_type": scheme.weight_type,
            "per_channel": scheme.per_channel,
            "reduce_range": scheme.reduce_range,
            "op_types": list(INT8_OP_TYPES),
            "excluded_nodes": excluded,
            "kernel_family": family.name,
            "for_cpus": family.tiers,
            "requires_any_cpu_flag": list(family.requires_any_flag),
            **(extra or {}),
            # the tier of the gate this conversion ran; later verify rows add theirs (manifest "verification")
            "verified_on": [current_environment(CPU_PROVIDER).tier],
        }

    return convert_each(
        model_dir,
        Derivation("int8", lambda path: artifact_file_name(path, family.file_tag)),
        write,
        towers=towers,
        force=force,
        progress=progress,
    )
