"""What every INT8 file of the stage is made by: the family build a tower's plain step and fallbacks
share, the two quantizer calls (dynamic, blockwise), and the conversion record naming the family."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from clip_export.core.environment import current_environment
from clip_export.core.errors import import_optional
from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions
from clip_export.core.int8_sensitivity import weight_matmuls
from clip_export.core.manifest import intact_reference, read_manifest, resolve_inside
from clip_export.core.progress import Progress
from clip_export.core.spec import (
    CPU_PROVIDER,
    INT8_BLOCKWISE,
    INT8_FAMILIES,
    ONNX_FORMAT,
    TOWERS,
    Int8Blockwise,
    Int8Family,
    Int8Scheme,
    artifact_file_name,
)

# The family whose file a default run's fallbacks build: no CPU requirement, so it serves every tier.
EVERY_X86 = next(family for family in INT8_FAMILIES.values() if not family.requires_any_flag)
# MatMul/Gemm weights are quantized; the rest (Conv patch embedding, attention score MatMuls
# between two activations) stays float. See docs/convert.md for the measurements.
INT8_OP_TYPES = ("MatMul", "Gemm")


def onnx_module() -> Any:
    """onnx, imported where used (a heavy optional dependency)."""
    import onnx

    return onnx


@dataclass(frozen=True)
class Build:
    """One kernel family's INT8 build of a model directory: what its plain step and fallbacks share."""

    model_dir: Path
    family: Int8Family
    scheme: Int8Scheme
    exclude_nodes: tuple[str, ...]
    force: bool
    progress: Progress

    def convert(self, write: Callable[[Path, Path], dict[str, Any]], towers: Sequence[str]) -> ConvertResult:
        """convert_each under this family's file name, through the unchanged int8 gate."""
        return convert_each(
            self.model_dir,
            Derivation("int8", lambda path: artifact_file_name(path, self.family.file_tag)),
            write,
            towers=towers,
            force=self.force,
            progress=self.progress,
        )


def source_model(model_dir: Path, tower: str, load_external_data: bool = True) -> Any:
    """The tower's fp32 ONNX graph (without its weights' bytes when `load_external_data` is False)."""
    source = read_manifest(model_dir).select(precision="fp32", format=ONNX_FORMAT, tower=tower)[0]
    path = resolve_inside(model_dir, source.path, "the source artifact")
    return onnx_module().load(str(path), load_external_data=load_external_data)


def reference_inputs(model_dir: Path, tower: str, items: int) -> tuple[Any, Any]:
    """The first `items` stored reference inputs of `tower` and their fp32 torch outputs."""
    import numpy as np

    _, reference = intact_reference(
        model_dir, read_manifest(model_dir), "the INT8 fallback's reference", f"{model_dir} has no reference"
    )
    with np.load(reference) as data:
        spec = TOWERS[tower]
        return tuple(data[name][:items] for name in (spec.input_name, spec.output_name))


def quantize_weights(model: Any, target: Path, scheme: Int8Scheme, excluded: Sequence[str]) -> None:
    """onnxruntime's dynamic quantization of the MatMul/Gemm weights of `model` (rewritten in place) with
    `scheme`, leaving `excluded` float: the one call every INT8 file here is made by."""
    import logging

    quantization = import_optional(
        "onnxruntime.quantization", package="onnxruntime", extra="cpu", purpose="INT8 quantization"
    )
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)  # the quantizer advises pre-processing through the root logger
    try:
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
    finally:
        root.setLevel(previous)


def quantize_blockwise(model: Any, excluded: Sequence[str], scheme: Int8Blockwise = INT8_BLOCKWISE) -> Any:
    """`scheme`'s blockwise 8-bit MatMul weights (onnxruntime MatMulNBits, symmetric), `excluded` left
    float; returns the quantized ModelProto: the one call every blockwise INT8 file is made by."""
    return matmul_nbits(
        model,
        bits=scheme.bits,
        block_size=scheme.block_size,
        symmetric=scheme.symmetric,
        accuracy_level=scheme.accuracy_level,
        excluded=excluded,
        purpose="INT8 quantization",
    )


def quantize_family(
    build: Build,
    towers: Sequence[str],
    keep_float: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
    rewrite: Callable[[Any], Sequence[str]] | None = None,
) -> ConvertResult:
    """The family's scheme over `towers`, `keep_float` MatMuls left float besides the build's exclusions;
    `rewrite` changes the fp32 graph first (in float, an identity) and names the MatMuls it adds to keep float."""
    onnx = onnx_module()
    scheme = build.scheme

    def write(source: Path, target: Path) -> dict[str, Any]:
        model = onnx.load(str(source))
        kept = [*int8_excluded_nodes(model), *build.exclude_nodes, *keep_float]
        excluded = quantizer_exclusions(model, [*kept, *(rewrite(model) if rewrite else ())])
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
            **family_record(build.family),
            **(extra or {}),
        }

    return build.convert(write, towers)


def quantize_blockwise_tower(build: Build, tower: str, plain_failure: str) -> ConvertResult:
    """INT8_BLOCKWISE for one tower under the build's family's file name, through the unchanged int8 gate."""
    onnx = onnx_module()

    def write(source: Path, target: Path) -> dict[str, Any]:
        model = onnx.load(str(source))
        excluded = [*int8_excluded_nodes(model), *build.exclude_nodes]
        candidates = weight_matmuls(model, INT8_OP_TYPES, excluded)  # before the quantizer rewrites `model`
        quantized = quantize_blockwise(model, excluded)
        set_precision_metadata(quantized, "int8")
        save_model(quantized, target)
        return {
            "tool": f"onnxruntime.quantization.matmul_nbits_quantizer {tool_version('onnxruntime')}",
            "mode": "blockwise",
            "weight_type": INT8_BLOCKWISE.label,
            "bits": INT8_BLOCKWISE.bits,
            "block_size": INT8_BLOCKWISE.block_size,
            "symmetric": INT8_BLOCKWISE.symmetric,
            "accuracy_level": INT8_BLOCKWISE.accuracy_level,
            "matmul_nbits_nodes": sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits"),
            # Gemm weights (timm towers' Linear) stay float here: MatMulNBits covers MatMul only
            "weight_matmuls": len(candidates),
            "excluded_nodes": excluded,
            "plain_failure": plain_failure,
            **family_record(build.family),
        }

    return build.convert(write, [tower])


def family_record(family: Int8Family) -> dict[str, Any]:
    """The conversion-record fields that name the kernel family and where the gate ran."""
    return {
        "kernel_family": family.name,
        "for_cpus": family.tiers,
        "requires_any_cpu_flag": list(family.requires_any_flag),
        # the tier of the gate this conversion ran; later verify rows add theirs (manifest "verification")
        "verified_on": [current_environment(CPU_PROVIDER).tier_label],
    }
