"""Running TensorRT engines (TensorRT 10 and 11 Python API): import, version and GPU checks, and
execution. Separate from the build stage (tensorrt.py) so that verify, bench and the runner can run
an engine without importing the stage that builds one. Unverified on real TensorRT here: no GPU
machine of this project has had TensorRT installed (tests use tests/trt_standin.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.errors import MissingExtraError, TensorRTError, import_optional
from clip_export.core.spec import VERIFY_BATCH

SUPPORTED_MAJORS = (10, 11)


def import_tensorrt() -> Any:
    return import_optional(
        "tensorrt",
        package="tensorrt",
        extra="tensorrt",
        purpose="building TensorRT engines (GPU only; its wheels come from NVIDIA's index)",
    )


def major_version(trt: Any) -> int:
    try:
        major = int(str(trt.__version__).split(".")[0])
    except ValueError as exc:
        raise TensorRTError(f"cannot read the TensorRT version from '{trt.__version__}'") from exc
    if major not in SUPPORTED_MAJORS:
        raise TensorRTError(
            f"TensorRT {trt.__version__} is not supported; supported: {', '.join(map(str, SUPPORTED_MAJORS))}.x"
        )
    return major


def gpu_info() -> tuple[str, str]:
    """(name, compute capability) of CUDA device 0, or TensorRTError when there is none."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a core dependency
        raise TensorRTError("no CUDA GPU can be queried (torch is missing)") from exc
    if not torch.cuda.is_available():
        raise TensorRTError(
            "TensorRT engines need a CUDA GPU, and none is visible here; install 'clip-export[tensorrt]' "
            "on a GPU machine"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def runnable_here(entry: ArtifactEntry) -> tuple[bool, str]:
    """An engine runs only with the TensorRT version and GPU generation it was built with."""
    try:
        trt = import_tensorrt()
    except MissingExtraError:
        return False, "the tensorrt package is not installed (pip install 'clip-export[tensorrt]' on a GPU machine)"
    try:
        gpu, capability = gpu_info()
    except TensorRTError as exc:
        return False, str(exc)
    built = entry.detail("tensorrt", {})
    if built.get("version") != str(trt.__version__):
        return False, f"built with TensorRT {built.get('version')}, this machine has {trt.__version__}"
    if built.get("compute_capability") != capability:
        return (
            False,
            f"built for compute capability {built.get('compute_capability')} ({built.get('gpu')}), this "
            f"GPU is {capability} ({gpu})",
        )
    return True, ""


def run_engine(plan_path: Path, inputs: np.ndarray, batch: int = VERIFY_BATCH) -> np.ndarray:
    """Run a serialized engine on CUDA through torch-allocated buffers; returns float32 outputs."""
    import torch

    trt = import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(Path(plan_path).read_bytes())
    if engine is None:
        raise TensorRTError(f"TensorRT could not deserialize {Path(plan_path).name}")
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
    output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
    stream = torch.cuda.Stream()
    outputs = []
    for start in range(0, len(inputs), batch):
        chunk = torch.from_numpy(np.ascontiguousarray(inputs[start : start + batch])).cuda()
        context.set_input_shape(input_name, tuple(chunk.shape))
        out = torch.empty(tuple(context.get_tensor_shape(output_name)), dtype=torch.float32, device="cuda")
        context.set_tensor_address(input_name, chunk.data_ptr())
        context.set_tensor_address(output_name, out.data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise TensorRTError(f"TensorRT execution failed for {Path(plan_path).name}")
        stream.synchronize()
        outputs.append(out.cpu().numpy())
    return np.concatenate(outputs)
