"""TensorRT stage: one serialized engine per tower, written against the TensorRT 10 and 11 APIs.

TensorRT 11 removed weak typing (BuilderFlag.FP16, precision constraints, EXPLICIT_BATCH): every
network is strongly typed, so an fp16 engine comes from our verified fp16 ONNX. On 10 we ask for
STRONGLY_TYPED explicitly, so both versions build the graph with the precisions it declares.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.conversion import Derivation, convert_locked
from clip_export.core.errors import TensorRTError
from clip_export.core.manifest import (
    atomic_write_bytes,
    exclusive,
    file_record,
    read_manifest,
)
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import TENSORRT_FORMAT, TOWERS, engine_file_name
from clip_export.core.trt_runtime import gpu_info, import_tensorrt, major_version

TIMING_CACHE_NAME = "tensorrt.timing.cache"
DEFAULT_PROFILE = (1, 1, 64)


@dataclass(frozen=True)
class EngineResult:
    tower: str
    path: str
    source: str
    precision: str
    bytes: int
    seconds: float
    verdict: str
    epcontext: str | None


@dataclass(frozen=True)
class TrtResult:
    model_dir: Path
    tensorrt_version: str
    gpu: str
    compute_capability: str
    engines: tuple[EngineResult, ...]


def network_flags(trt: Any, major: int) -> int:
    if major >= 11:
        return 0  # strongly typed is the only mode; the flag enum no longer carries it
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def profile_shapes(
    tower: str, batch: tuple[int, int, int], image_size: Sequence[int], context_length: int
) -> tuple[tuple[int, ...], ...]:
    tail = (3, int(image_size[0]), int(image_size[1])) if tower == "visual" else (int(context_length),)
    return tuple((b, *tail) for b in batch)


def build_engine(
    trt: Any,
    onnx_path: Path,
    tower: str,
    *,
    batch: tuple[int, int, int],
    image_size: Sequence[int],
    context_length: int,
    workspace_bytes: int,
    timing_cache: Path,
    precision: str,
) -> bytes:
    """Parse, configure and build one engine; every failure becomes a TensorRTError."""
    major = major_version(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, major))
    parser = trt.OnnxParser(network, logger)
    parsed = parser.parse_from_file(str(onnx_path))
    if not parsed or parser.num_errors:
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise TensorRTError(f"TensorRT could not parse {onnx_path.name}: {'; '.join(errors) or 'unknown parser error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 matmuls would break the fp32 thresholds
    profile = builder.create_optimization_profile()
    lo, opt, hi = profile_shapes(tower, batch, image_size, context_length)
    profile.set_shape(TOWERS[tower].input_name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TensorRTError(
            f"TensorRT failed to build an engine for {onnx_path.name} (build_serialized_network returned None)"
        )
    atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(plan))


def epcontext_model(engine_name: str, entry: ArtifactEntry, trt_version: str, compute_capability: str) -> Any:
    """An ONNX model with one EPContext node pointing at the engine, for onnxruntime's TensorRT EP."""
    from onnx import TensorProto, helper

    dtype = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    inp, out = entry.inputs[0], entry.outputs[0]
    node = helper.make_node(
        "EPContext",
        [inp.name],
        [out.name],
        domain="com.microsoft",
        main_context=1,
        embed_mode=0,
        ep_cache_context=engine_name,
        ep_sdk_version=trt_version,
        hardware_architecture=compute_capability.replace(".", ""),
        source="TensorrtExecutionProvider",
    )
    graph = helper.make_graph(
        [node],
        f"{entry.tower}_epcontext",
        [helper.make_tensor_value_info(inp.name, dtype[inp.dtype], list(inp.shape))],
        [helper.make_tensor_value_info(out.name, dtype[out.dtype], list(out.shape))],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    return model


def build_engines(
    model_dir: Path,
    *,
    fp16: bool = False,
    batch: tuple[int, int, int] = DEFAULT_PROFILE,
    workspace_gb: float = 4.0,
    towers: Sequence[str] = ("visual", "text"),
    epcontext: bool = False,
    force: bool = False,
    verify_engines: bool = True,
    progress: Progress = silent,
) -> TrtResult:
    """Build a `.plan` per tower from the verified ONNX of the requested precision."""
    if not (1 <= batch[0] <= batch[1] <= batch[2]):
        raise TensorRTError(f"--batch must satisfy 1 <= MIN <= OPT <= MAX, got {batch[0]}:{batch[1]}:{batch[2]}")
    model_dir = Path(model_dir)
    with exclusive(model_dir):  # two builds into one directory: the second fails at once
        return _build_locked(model_dir, fp16, batch, workspace_gb, towers, epcontext, force, verify_engines, progress)


def _build_locked(
    model_dir: Path,
    fp16: bool,
    batch: tuple[int, int, int],
    workspace_gb: float,
    towers: Sequence[str],
    epcontext: bool,
    force: bool,
    verify_engines: bool,
    progress: Progress,
) -> TrtResult:
    """The shared conversion loop (conversion.convert_locked) with an engine build as its write."""
    manifest = read_manifest(model_dir)
    precision = "fp16" if fp16 else "fp32"
    trt = import_tensorrt()
    major_version(trt)
    gpu, capability = gpu_info()
    started: dict[str, float] = {}

    def build(source_path: Path, target: Path) -> dict[str, Any]:
        tower = next(t for t in TOWERS if source_path.name.startswith(f"{t}."))
        started[target.name] = time.perf_counter()
        progress(
            f"building the {tower} TensorRT engine from {source_path.name} (profile {batch[0]}:{batch[1]}:{batch[2]})"
        )
        plan = build_engine(
            trt,
            source_path,
            tower,
            batch=batch,
            image_size=manifest.preprocess.image_size,
            context_length=manifest.tokenizer.context_length,
            workspace_bytes=int(workspace_gb * 1024**3),
            timing_cache=model_dir / TIMING_CACHE_NAME,
            precision=precision,
        )
        atomic_write_bytes(target, plan)
        return {
            "version": str(trt.__version__),
            "gpu": gpu,
            "compute_capability": capability,
            "profile": list(batch),
            "workspace_gb": workspace_gb,
            "strongly_typed": True,
        }

    def wrap(source: ArtifactEntry, entry: ArtifactEntry) -> ArtifactEntry:
        if not epcontext:
            return entry
        name = engine_file_name(source.path, precision, epcontext=True)
        model = epcontext_model(entry.path, source, str(trt.__version__), capability)
        atomic_write_bytes(model_dir / name, model.SerializeToString())
        return entry.with_details(epcontext=file_record(model_dir / name, model_dir).to_json())

    derivation = Derivation(
        precision=precision,
        name=lambda source: engine_file_name(source, precision),
        source_precision=precision,
        format=TENSORRT_FORMAT,
        details_key="tensorrt",
        gated=verify_engines,
        graph=False,
        finish=wrap,
    )
    converted = convert_locked(model_dir, derivation, build, towers=towers, force=force, progress=progress)
    engines = tuple(
        EngineResult(
            a.tower,
            a.path,
            a.source,
            precision,
            a.bytes,
            a.seconds,
            a.verdict,
            engine_file_name(a.source, precision, epcontext=True) if epcontext else None,
        )
        for a in converted.artifacts
    )
    return TrtResult(model_dir, str(trt.__version__), gpu, capability, engines)
