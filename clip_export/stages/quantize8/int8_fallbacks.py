"""INT8's fallbacks for a tower whose plain scheme failed its gate: blockwise 8-bit (the every-x86
family), the outlier channels split off in float (either family), then mixed precision by measured
sensitivity. Each goes through the unchanged gate; docs/convert.md has the measurements."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_export.core.conversion import ConvertResult
from clip_export.core.errors import ClipExportError, GateFailedError
from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions
from clip_export.core.int8_sensitivity import most_sensitive_first, sensitivity, weight_matmuls
from clip_export.core.outlier_split import measure_outlier_channels, split_outlier_channels
from clip_export.core.spec import (
    INT8_BLOCKWISE,
    INT8_MIXED_MAX_FLOAT_SHARE,
    INT8_OUTLIER_SPLIT,
    INT8_SENSITIVITY_ITEMS,
    TOWERS,
)
from clip_export.stages.quantize8.int8_build import (
    EVERY_X86,
    INT8_OP_TYPES,
    Build,
    onnx_module,
    quantize_blockwise_tower,
    quantize_family,
    quantize_weights,
    reference_inputs,
    source_model,
)


def fallback(
    build: Build, tower: str, plain_failure: str, last_resort: bool = True
) -> tuple[ConvertResult | None, str]:
    """After the plain scheme failed the gate: blockwise 8-bit (every-x86 family only: its kernels hold
    on every tier; one gate run), then the outlier channels split off (the family's weight type, so
    as fast; one gate run), then, if `last_resort`, mixed precision by measured sensitivity. (result
    or None, a line saying what happened)."""
    failures: list[str] = []
    attempts = [(INT8_OUTLIER_SPLIT.label, _outlier_split_attempt)]
    if build.family is EVERY_X86:  # a family with CPU requirements keeps its weight type
        attempts.insert(0, (INT8_BLOCKWISE.label, _blockwise_attempt))
    for label, attempt in attempts:
        try:
            outcome = attempt(build, tower, plain_failure, failures)
        except GateFailedError as exc:
            failures.append(f"{label}: {'; '.join(exc.failures)}")
        except ClipExportError:
            raise
        except Exception as exc:  # onnxruntime cannot build or run it here: recorded, and the next is tried
            failures.append(f"{label}: {type(exc).__name__}: {exc}")
        else:
            if isinstance(outcome, str):  # not tried, and why
                failures.append(outcome)
                continue
            return outcome
    if not last_resort:
        return None, "; ".join([f"not kept: {plain_failure}", *failures])
    return _mixed_precision(build, tower, plain_failure, failures)


def _blockwise_attempt(
    build: Build, tower: str, plain_failure: str, failures: Sequence[str]
) -> tuple[ConvertResult, str] | str:
    """INT8_BLOCKWISE, or why it is not tried; GateFailedError when it fails the gate."""
    not_for = blockwise_not_for(build.model_dir, tower, build.exclude_nodes)
    if not_for is not None:
        return not_for
    build.progress(f"{tower} {build.scheme.label} failed its gate; trying {INT8_BLOCKWISE.label}")
    result = quantize_blockwise_tower(build, tower, plain_failure)
    record = result.artifacts[0].details  # what the write returned: the conversion record
    return result, (
        f"failed its gate plain; kept as {INT8_BLOCKWISE.label}, {record['matmul_nbits_nodes']} of "
        f"{record['weight_matmuls']} weight MatMuls quantized"
    )


def _outlier_split_attempt(
    build: Build, tower: str, plain_failure: str, failures: Sequence[str]
) -> tuple[ConvertResult, str] | str:
    """INT8_OUTLIER_SPLIT in the family's own scheme, or why it is not tried (no channel stands out);
    GateFailedError when it fails the gate. The channels are measured once on the fp32 tower."""
    rule = INT8_OUTLIER_SPLIT
    model = source_model(build.model_dir, tower)
    candidates = weight_matmuls(model, INT8_OP_TYPES, [*int8_excluded_nodes(model), *build.exclude_nodes])
    inputs, _ = reference_inputs(build.model_dir, tower, rule.calibration_items)
    channels, _ = measure_outlier_channels(  # `model` is used up by the measurement
        model, candidates, TOWERS[tower].input_name, inputs, rule, build.model_dir
    )
    if not channels:
        return (
            f"{rule.label}: not tried, no activation channel of {tower} is that wide on {len(inputs)} reference inputs"
        )
    build.progress(f"{tower} {build.scheme.label} failed its gate; trying {rule.label}")
    split_off = sum(len(c) for c in channels.values())
    record = {
        "rule": rule.label,
        "ratio": rule.ratio,
        "max_share": rule.max_share,
        "calibrated_on": f"the first {len(inputs)} reference inputs",
        "channels": {tensor: [int(k) for k in index] for tensor, index in channels.items()},
        "plain_failure": plain_failure,
        "fallback_failures": list(failures),
    }

    def split(model: Any) -> Sequence[str]:
        return split_outlier_channels(model, candidates, channels).float_matmuls

    result = quantize_family(build, [tower], extra={"outlier_split": record}, rewrite=split)
    return result, "; ".join(
        [
            "failed its gate plain",
            *failures,
            f"kept with {split_off} outlier channels of {len(channels)} activations split off in float, "
            f"every weight MatMul quantized",
        ]
    )


def blockwise_not_for(model_dir: Path, tower: str, exclude_nodes: Sequence[str]) -> str | None:
    """Why blockwise is not tried for this tower, or None: only where MatMulNBits, which covers
    MatMul and not Gemm, would quantize as large a share of the weights as mixed precision may keep."""
    model = source_model(model_dir, tower, load_external_data=False)  # the graph is enough to count
    excluded = [*int8_excluded_nodes(model), *exclude_nodes]
    matmuls, weights = (len(weight_matmuls(model, ops, excluded)) for ops in (("MatMul",), INT8_OP_TYPES))
    if not matmuls:
        return f"{INT8_BLOCKWISE.label}: not tried, {tower} has no weight MatMul for it to quantize"
    if matmuls < (1 - INT8_MIXED_MAX_FLOAT_SHARE) * weights:
        return f"{INT8_BLOCKWISE.label}: not tried, it would quantize only {matmuls} of {weights} weight MatMuls/Gemms"
    return None


def _mixed_precision(
    build: Build, tower: str, plain_failure: str, failures: Sequence[str]
) -> tuple[ConvertResult | None, str]:
    """After the plain scheme and the other fallbacks failed the gate: measure each weight MatMul's error quantized alone
    (the rest float) on the first INT8_SENSITIVITY_ITEMS reference inputs, then keep the most
    sensitive in float, one more at a time, until the unchanged gate passes or
    INT8_MIXED_MAX_FLOAT_SHARE of them would stay float. (result or None, a line saying what happened)."""
    model_dir, scheme = build.model_dir, build.scheme
    model = source_model(model_dir, tower)
    base = [*int8_excluded_nodes(model), *build.exclude_nodes]
    candidates = weight_matmuls(model, INT8_OP_TYPES, base)
    spec = TOWERS[tower]
    inputs, expected = reference_inputs(model_dir, tower, INT8_SENSITIVITY_ITEMS)

    def quantize_only(name: str, target: Path) -> None:
        fresh = onnx_module().ModelProto()
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
            "fallback_failures": list(failures),
        }
        try:
            result = quantize_family(build, [tower], keep_float=kept, extra={"mixed_precision": details})
        except GateFailedError:
            continue
        return result, "; ".join(
            [
                "failed its gate plain",
                *failures,
                f"kept with {count} of {len(candidates)} MatMuls float (mixed precision by measured sensitivity)",
            ]
        )
    return None, "; ".join(
        [
            f"not kept: {plain_failure}",
            *failures,
            f"with up to {limit} of {len(candidates)} MatMuls float (most sensitive first) it still failed",
        ]
    )
