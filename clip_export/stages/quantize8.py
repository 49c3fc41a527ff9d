"""INT8 stage: dynamic INT8 MatMul/Gemm weights for CPU serving, one artifact per kernel family,
each gated by verify; a tower whose plain scheme fails its gate falls back to blockwise 8-bit, then
to mixed precision by measured sensitivity (docs/convert.md has the measurements)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.conversion import (
    ConvertedArtifact,
    ConvertResult,
    Derivation,
    convert_each,
    matmul_nbits,
    save_model,
    set_precision_metadata,
    tool_version,
)
from clip_export.core.environment import current_environment
from clip_export.core.errors import ClipExportError, ConversionError, GateFailedError, import_optional
from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions, require_nodes
from clip_export.core.int8_sensitivity import most_sensitive_first, sensitivity, weight_matmuls
from clip_export.core.manifest import exclusive, intact_reference, read_manifest, resolve_inside, write_manifest
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import (
    CPU_PROVIDER,
    INT8_BLOCKWISE,
    INT8_FAMILIES,
    INT8_MIXED_MAX_FLOAT_SHARE,
    INT8_SENSITIVITY_ITEMS,
    ONNX_FORMAT,
    TOWERS,
    Int8Blockwise,
    Int8Family,
    Int8Scheme,
    artifact_file_name,
    int8_family_for_weight_type,
)

__all__ = [
    "ConvertedArtifact",
    "ConvertResult",
    "INT8_OP_TYPES",
    "quantize_blockwise",
    "quantize_int8",
    "quantize_weights",
]

# The family whose file a default run's fallbacks build: no CPU requirement, so it serves every tier.
EVERY_X86 = next(family for family in INT8_FAMILIES.values() if not family.requires_any_flag)
# MatMul/Gemm weights are quantized; the rest (Conv patch embedding, attention score MatMuls
# between two activations) stays float. See docs/convert.md for the measurements.
INT8_OP_TYPES = ("MatMul", "Gemm")


def _onnx() -> Any:
    import onnx

    return onnx


@dataclass(frozen=True)
class _Build:
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


def _source_model(model_dir: Path, tower: str, load_external_data: bool = True) -> Any:
    """The tower's fp32 ONNX graph (without its weights' bytes when `load_external_data` is False)."""
    source = read_manifest(model_dir).select(precision="fp32", format=ONNX_FORMAT, tower=tower)[0]
    path = resolve_inside(model_dir, source.path, "the source artifact")
    return _onnx().load(str(path), load_external_data=load_external_data)


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
        build = _Build(Path(model_dir), family, chosen, tuple(exclude_nodes), force, progress)
        for tower in towers:  # a tower that fails one family's gate keeps the other family and the other tower
            try:
                result = _quantize_family(build, [tower])
            except GateFailedError as exc:
                if scheme is None and family is not EVERY_X86:  # one fallback file, built once, serves every tier
                    notes.append(
                        f"{tower}: {family.file_tag} ({chosen.label}) failed its gate plain; not built: the "
                        f"{EVERY_X86.file_tag} file, with its fallbacks, serves {family.tiers} too"
                    )
                    failed.setdefault(tower, []).append(f"{family.file_tag} ({chosen.label}): {exc}")
                    continue
                result, how = _fallback(build, tower, str(exc))
                notes.append(f"{tower}: {family.file_tag} ({chosen.label}) {how}")
                if result is None:
                    failed.setdefault(tower, []).append(f"{family.file_tag} ({chosen.label}) {how}")
                    continue
            artifacts += result.artifacts
    built = {a.tower for a in artifacts}
    if failed and not built:
        raise ConversionError(
            "the int8 gate failed for every tower and scheme: " + " | ".join(sum(failed.values(), []))
        )
    _record_towers_without_int8(Path(model_dir), {t: "; ".join(w) for t, w in failed.items() if t not in built}, built)
    return ConvertResult(Path(model_dir), "int8", tuple(artifacts), tuple(notes))


def _fallback(build: _Build, tower: str, plain_failure: str) -> tuple[ConvertResult | None, str]:
    """After the plain scheme failed the gate: blockwise 8-bit (every-x86 family only: its kernels hold
    on every tier; one gate run), then mixed precision by measured sensitivity. (result or None, a
    line saying what happened)."""
    blockwise_failure = _blockwise_not_for(build.model_dir, tower, build.family, build.exclude_nodes)
    if blockwise_failure is None:
        build.progress(f"{tower} {build.scheme.label} failed its gate; trying {INT8_BLOCKWISE.label}")
        try:
            result = _quantize_blockwise(build, tower, plain_failure)
        except GateFailedError as exc:
            blockwise_failure = f"{INT8_BLOCKWISE.label}: {'; '.join(exc.failures)}"
        except ClipExportError:
            raise
        except Exception as exc:  # onnxruntime cannot build or run it here: recorded, and mixed precision is tried
            blockwise_failure = f"{INT8_BLOCKWISE.label}: {type(exc).__name__}: {exc}"
        else:
            record = result.artifacts[0].details  # what the write returned: the conversion record
            return result, (
                f"failed its gate plain; kept as {INT8_BLOCKWISE.label}, {record['matmul_nbits_nodes']} of "
                f"{record['weight_matmuls']} weight MatMuls quantized"
            )
    return _mixed_precision(build, tower, plain_failure, blockwise_failure)


def _blockwise_not_for(model_dir: Path, tower: str, family: Int8Family, exclude_nodes: Sequence[str]) -> str | None:
    """Why blockwise is not tried for this tower and family, or None. It is the every-x86 family's
    (a family with CPU requirements keeps its weight type), and only where MatMulNBits, which covers
    MatMul and not Gemm, would quantize as large a share of the weights as mixed precision may keep."""
    if family is not EVERY_X86:
        return f"{INT8_BLOCKWISE.label}: not tried for {family.file_tag}, which keeps its weight type"
    model = _source_model(model_dir, tower, load_external_data=False)  # the graph is enough to count
    excluded = [*int8_excluded_nodes(model), *exclude_nodes]
    matmuls, weights = (len(weight_matmuls(model, ops, excluded)) for ops in (("MatMul",), INT8_OP_TYPES))
    if not matmuls:
        return f"{INT8_BLOCKWISE.label}: not tried, {tower} has no weight MatMul for it to quantize"
    if matmuls < (1 - INT8_MIXED_MAX_FLOAT_SHARE) * weights:
        return f"{INT8_BLOCKWISE.label}: not tried, it would quantize only {matmuls} of {weights} weight MatMuls/Gemms"
    return None


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
    build: _Build, tower: str, plain_failure: str, blockwise_failure: str
) -> tuple[ConvertResult | None, str]:
    """After the plain scheme and blockwise failed the gate: measure each weight MatMul's error quantized alone
    (the rest float) on the first INT8_SENSITIVITY_ITEMS reference inputs, then keep the most
    sensitive in float, one more at a time, until the unchanged gate passes or
    INT8_MIXED_MAX_FLOAT_SHARE of them would stay float. (result or None, a line saying what happened)."""
    import numpy as np

    model_dir, scheme = build.model_dir, build.scheme
    model = _source_model(model_dir, tower)
    base = [*int8_excluded_nodes(model), *build.exclude_nodes]
    candidates = weight_matmuls(model, INT8_OP_TYPES, base)
    _, reference = intact_reference(
        model_dir, read_manifest(model_dir), "the sensitivity's reference", f"{model_dir} has no reference"
    )
    with np.load(reference) as data:
        spec = TOWERS[tower]
        inputs, expected = (data[name][:INT8_SENSITIVITY_ITEMS] for name in (spec.input_name, spec.output_name))

    def quantize_only(name: str, target: Path) -> None:
        fresh = _onnx().ModelProto()
        fresh.CopyFrom(model)  # the quantizer rewrites the graph it is given (Gemm → MatMul)
        quantize_weights(
            fresh, target, scheme, quantizer_exclusions(model, [*base, *(c for c in candidates if c != name)])
        )

    build.progress(f"{tower} {scheme.label} failed its gate; measuring {len(candidates)} MatMuls' sensitivity")
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
            "blockwise_failure": blockwise_failure,
        }
        try:
            result = _quantize_family(build, [tower], keep_float=kept, extra={"mixed_precision": details})
        except GateFailedError:
            continue
        return (
            result,
            f"failed its gate plain; {blockwise_failure}; kept with {count} of {len(candidates)} MatMuls float "
            "(mixed precision by measured sensitivity)",
        )
    return None, (
        f"not kept: {plain_failure}; {blockwise_failure}; with up to {limit} of {len(candidates)} MatMuls float "
        "(most sensitive first) it still failed"
    )


def _quantize_family(
    build: _Build, towers: Sequence[str], keep_float: Sequence[str] = (), extra: dict[str, Any] | None = None
) -> ConvertResult:
    """The family's scheme over `towers`, `keep_float` MatMuls left float besides the build's exclusions."""
    onnx = _onnx()
    scheme = build.scheme

    def write(source: Path, target: Path) -> dict[str, Any]:
        model = onnx.load(str(source))
        excluded = quantizer_exclusions(model, [*int8_excluded_nodes(model), *build.exclude_nodes, *keep_float])
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
            **_family_record(build.family),
            **(extra or {}),
        }

    return build.convert(write, towers)


def _quantize_blockwise(build: _Build, tower: str, plain_failure: str) -> ConvertResult:
    """INT8_BLOCKWISE for one tower under the build's family's file name, through the unchanged int8 gate."""
    onnx = _onnx()

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
            **_family_record(build.family),
        }

    return build.convert(write, [tower])


def _family_record(family: Int8Family) -> dict[str, Any]:
    """The conversion-record fields that name the kernel family and where the gate ran."""
    return {
        "kernel_family": family.name,
        "for_cpus": family.tiers,
        "requires_any_cpu_flag": list(family.requires_any_flag),
        # the tier of the gate this conversion ran; later verify rows add theirs (manifest "verification")
        "verified_on": [current_environment(CPU_PROVIDER).tier],
    }
