"""The loop every converter shares: integrity, refusal without --force, staged write, verify gate,
manifest entry, all under the directory's lock. fp16/INT8 (convert), 4-bit (quantize4) and the
preprocessing graphs (preprocess_stage) differ only in what `write` does and what the entry declares."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.artifact import ArtifactEntry, declared_io
from clip_export.core.checks import gate
from clip_export.core.errors import GateFailedError, ManifestError, import_optional
from clip_export.core.manifest import (
    exclusive,
    file_record,
    read_manifest,
    refuse_existing,
    require_intact,
    resolve_inside,
    write_manifest,
)
from clip_export.core.progress import Progress
from clip_export.core.spec import EXTERNAL_DATA_THRESHOLD_BYTES, ONNX_FORMAT, threshold_key


@dataclass(frozen=True)
class ConvertedArtifact:
    source: str
    path: str
    tower: str
    precision: str
    bytes: int
    seconds: float
    verdict: str
    mean_abs_normalized: float | None
    min_top1: float | None
    details: dict[str, Any]


@dataclass(frozen=True)
class ConvertResult:
    model_dir: Path
    precision: str
    artifacts: tuple[ConvertedArtifact, ...]
    notes: tuple[str, ...] = ()  # one line each for what was deliberately not built (e.g. INT8 for VNNI on AVX2)


@dataclass(frozen=True)
class Derivation:
    """What one conversion makes of each source: its precision, format, file name and I/O."""

    precision: str
    name: Callable[[str], str]  # source path → target file name (spec.artifact_file_name)
    source_precision: str = "fp32"
    format: str = ONNX_FORMAT
    io: Callable[[ArtifactEntry], dict[str, Any]] | None = (
        None  # source entry → {"inputs", "outputs"} in their JSON form, when they change
    )
    details_key: str = "conversion"  # where the entry keeps what `write` returned ("tensorrt" for engines)
    gated: bool = True  # False only where the user asked to skip the gate (trt --no-verify): "not verified"
    graph: bool = True  # an ONNX graph (it has an opset); False for a serialized engine
    # After the artifact is in place and before its entry is recorded: (source entry, entry) → entry,
    # e.g. TensorRT's EPContext wrapper beside the engine.
    finish: Callable[[ArtifactEntry, ArtifactEntry], ArtifactEntry] | None = None


def tool_version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "unknown"


def save_model(model: Any, path: Path) -> None:
    import onnx

    size = model.ByteSize()
    if size > EXTERNAL_DATA_THRESHOLD_BYTES:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=f"{path.name}.data"
        )
    else:
        onnx.save_model(model, str(path))


def matmul_nbits(
    model: Any,
    *,
    bits: int,
    block_size: int,
    symmetric: bool,
    accuracy_level: int | None,
    excluded: Sequence[str],
    purpose: str,
    op_types: Sequence[str] = ("MatMul",),
) -> Any:
    """onnxruntime's MatMulNBits quantizer over `model`: constant MatMul weights in blocks of
    `block_size` along the reduction axis (Gathers along each row, where `op_types` names them),
    `excluded` nodes left float; returns the quantized ModelProto. The one call q4 and INT8's
    blockwise fallback are made by."""
    nbits = import_optional(
        "onnxruntime.quantization.matmul_nbits_quantizer", package="onnxruntime", extra="cpu", purpose=purpose
    )
    root = logging.getLogger()
    previous = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs every MatMul through the root logger
    try:
        config = nbits.DefaultWeightOnlyQuantConfig(
            block_size=block_size,
            is_symmetric=symmetric,
            accuracy_level=accuracy_level,
            bits=bits,
            op_types_to_quantize=tuple(op_types),
            quant_axes=(("MatMul", 0), ("Gather", 1)),
        )
        quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=list(excluded), algo_config=config)
        quantizer.process()
        return quantizer.model.model
    finally:
        root.setLevel(previous)


def set_precision_metadata(model: Any, precision: str) -> None:
    for prop in model.metadata_props:
        if prop.key == "clip_export.precision":
            prop.value = precision
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = "clip_export.precision", precision


def convert_each(
    model_dir: Path,
    derivation: Derivation,
    write: Callable[[Path, Path], dict[str, Any]],
    *,
    towers: Sequence[str],
    force: bool,
    progress: Progress,
) -> ConvertResult:
    """Derive one artifact from each ONNX source of `derivation.source_precision`, gated by verify."""
    model_dir = Path(model_dir)
    with exclusive(model_dir):
        return convert_locked(model_dir, derivation, write, towers=towers, force=force, progress=progress)


def convert_locked(
    model_dir: Path,
    how: Derivation,
    write: Callable[[Path, Path], dict[str, Any]],
    *,
    towers: Sequence[str],
    force: bool,
    progress: Progress,
) -> ConvertResult:
    """convert_each for a caller that already holds the directory's lock (the TensorRT stage)."""
    manifest = read_manifest(model_dir)
    sources = manifest.select(precision=how.source_precision, format=ONNX_FORMAT, tower=tuple(towers))
    if not sources:
        raise ManifestError(
            f"{model_dir} has no {how.source_precision} ONNX artifact for tower(s) {', '.join(towers)}"
            + ("; run 'clip-export fp16' first" if how.source_precision == "fp16" else "")
        )
    results = []
    for source in sources:
        require_intact(model_dir, source)
        target_name = how.name(source.path)
        refuse_existing(manifest, model_dir, target_name, force)
        started = time.perf_counter()
        staging = model_dir / f".convert-{os.getpid()}"
        staging.mkdir(exist_ok=True)
        progress(f"converting {source.path} to {target_name}")
        try:
            details = write(resolve_inside(model_dir, source.path, "the source artifact"), staging / target_name)
            data_names = sorted(p.name for p in staging.iterdir() if p.name != target_name)
            inputs, outputs = declared_io(how.io(source), target_name) if how.io else (source.inputs, source.outputs)
            entry = ArtifactEntry.of_file(
                file_record(staging / target_name, model_dir),
                tower=source.tower,
                precision=how.precision,
                format=how.format,
                opset=details.get("opset", source.opset) if how.graph else None,  # a write that raises it says so
                inputs=inputs,
                outputs=outputs,
                external_data=tuple(file_record(staging / n, model_dir) for n in data_names),
                derived_from={"path": source.path, "sha256": source.sha256},
                details={how.details_key: details},
            )
            check = None
            if how.gated:
                progress(
                    f"verifying {target_name} against the fp32 reference ({threshold_key(how.precision, how.format)} "
                    "thresholds)"
                )
                check = gate(model_dir, entry)
                if not check.passed:
                    raise GateFailedError(
                        f"{target_name} failed verification, so it was not kept: " + "; ".join(check.failures),
                        tuple(check.failures),
                    )
            for name in [*data_names, target_name]:  # the graph file last: it is what makes the artifact look complete
                os.replace(staging / name, model_dir / name)
            entry = entry.moved(
                file_record(model_dir / target_name, model_dir),
                tuple(file_record(model_dir / n, model_dir) for n in data_names),
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if how.finish:
            entry = how.finish(source, entry)
        manifest = read_manifest(model_dir)
        manifest.upsert(entry)
        write_manifest(model_dir, manifest)
        results.append(
            ConvertedArtifact(
                source.path,
                target_name,
                source.tower,
                how.precision,
                entry.bytes,
                time.perf_counter() - started,
                check.status if check else "not verified",
                check.metric("mean_abs_normalized") if check else None,
                check.min_top1 if check else None,
                details,
            )
        )
    return ConvertResult(model_dir, how.precision, tuple(results))
