from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.errors import ClipExportError, ProviderUnavailableError
from clip_export.core.manifest import read_manifest
from clip_export.core.runner import NotRunnableHereError, open_runner, session_precision
from clip_export.core.spec import CPU_PROVIDER, TENSORRT_RUNTIME, TOWERS


def test_an_onnx_artifact_runs_one_batch_on_the_cpu(tiny_vit_dir: Path) -> None:
    manifest = read_manifest(tiny_vit_dir)
    entry = manifest.find(tower="text", precision="fp32")
    runner = open_runner(tiny_vit_dir, entry)
    with np.load(tiny_vit_dir / manifest.section("reference")["path"]) as data:
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
    entry = read_manifest(tiny_vit_dir).find(tower="visual", precision="fp32")
    with pytest.raises(ProviderUnavailableError, match="the requested provider was CUDAExecutionProvider"):
        open_runner(tiny_vit_dir, entry, "cuda")


def test_an_engine_without_tensorrt_is_not_runnable_here(tiny_vit_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    entry = dataclasses.replace(read_manifest(tiny_vit_dir).find(tower="visual", precision="fp32"), format="tensorrt")
    with pytest.raises(
        NotRunnableHereError, match=r"the tensorrt package is not installed \(pip install 'clip-export\[tensorrt\]'"
    ):
        open_runner(tiny_vit_dir, entry)
    assert TENSORRT_RUNTIME == "tensorrt-runtime"


def test_a_path_outside_the_directory_is_refused(tiny_vit_dir: Path) -> None:
    entry = dataclasses.replace(
        read_manifest(tiny_vit_dir).find(tower="visual", precision="fp32"), path="../visual.onnx"
    )
    with pytest.raises(ClipExportError, match="visual.onnx"):
        open_runner(tiny_vit_dir, entry)


def test_fp16_sessions_take_the_cpu_workaround() -> None:
    def entry(precision: str) -> ArtifactEntry:
        return ArtifactEntry(f"v.{precision}.onnx", "0" * 64, 1, "visual", precision, "onnx")

    assert session_precision(entry("fp16")) == "fp16"
    assert session_precision(entry("int8")) == session_precision(entry("fp32")) == "fp32"


def test_every_session_opens_through_the_runner_seam() -> None:
    """bench, export's parity check, the studies and the ceilings used to build their own sessions and
    so skipped the seam's rules; only sessions.py builds one and only runner.py asks it to."""
    import ast

    package = Path(__file__).resolve().parents[2] / "clip_export"
    callers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) in {"create_session", "InferenceSession"}
    )
    assert set(callers) == {"core/sessions.py", "core/runner.py"}


def test_open_graph_runs_a_graph_that_is_in_no_manifest() -> None:
    from onnx import TensorProto, helper

    from clip_export.core.runner import open_graph

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    runner = open_graph(model.SerializeToString())
    assert runner.provider_ran == "CPUExecutionProvider"
    assert runner.run(np.array([[-1.0, 2.0]], dtype=np.float32)).tolist() == [[0.0, 2.0]]
