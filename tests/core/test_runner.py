from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from clip_export.core.errors import ClipExportError, ProviderUnavailableError
from clip_export.core.manifest import find_artifact, read_manifest
from clip_export.core.runner import NotRunnableHereError, open_runner, session_precision
from clip_export.core.spec import CPU_PROVIDER, TENSORRT_RUNTIME, TOWERS


def test_an_onnx_artifact_runs_one_batch_on_the_cpu(tiny_vit_dir: Path) -> None:
    manifest = read_manifest(tiny_vit_dir)
    entry = find_artifact(manifest, tower="text", precision="fp32")
    runner = open_runner(tiny_vit_dir, entry)
    with np.load(tiny_vit_dir / manifest["reference"]["path"]) as data:
        ids, expected = data[TOWERS["text"].input_name][:3], data[TOWERS["text"].output_name][:3]
    got = runner.run(ids)
    assert runner.provider_ran == CPU_PROVIDER and runner.session is not None and got.shape == expected.shape
    assert np.allclose(
        got / np.linalg.norm(got, axis=1, keepdims=True),
        expected / np.linalg.norm(expected, axis=1, keepdims=True),
        atol=1e-4,
    )


def test_a_missing_provider_is_refused_not_replaced(tiny_vit_dir: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here; this checks the CPU-only refusal")
    entry = find_artifact(read_manifest(tiny_vit_dir), tower="visual", precision="fp32")
    with pytest.raises(ProviderUnavailableError, match="the requested provider was CUDAExecutionProvider"):
        open_runner(tiny_vit_dir, entry, "cuda")


def test_an_engine_without_tensorrt_is_not_runnable_here(tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    entry = {
        **find_artifact(read_manifest(tiny_vit_dir), tower="visual", precision="fp32"),
        "format": "tensorrt",
        "path": "visual.onnx",
    }
    with pytest.raises(
        NotRunnableHereError, match=r"the tensorrt package is not installed \(pip install 'clip-export\[tensorrt\]'"
    ):
        open_runner(tiny_vit_dir, entry)
    assert TENSORRT_RUNTIME == "tensorrt-runtime"


def test_a_path_outside_the_directory_is_refused(tiny_vit_dir: Path) -> None:
    entry = {**find_artifact(read_manifest(tiny_vit_dir), tower="visual", precision="fp32"), "path": "../visual.onnx"}
    with pytest.raises(ClipExportError, match="visual.onnx"):
        open_runner(tiny_vit_dir, entry)


def test_fp16_sessions_take_the_cpu_workaround() -> None:
    assert session_precision({"precision": "fp16"}) == "fp16"
    assert session_precision({"precision": "int8"}) == session_precision({"precision": "fp32"}) == "fp32"
