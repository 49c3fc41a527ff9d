"""Our side of the TensorRT path, exercised against a recording stand-in (tests/trt_standin.py).

The stand-in is not TensorRT: these tests check what clip-export asks of the API, never that an
engine works. Real engines are covered by the `tensorrt`-marked test, which needs a GPU.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from clip_export.cli import main
from clip_export.core import trt_runtime
from clip_export.core.errors import ManifestError, MissingExtraError, TensorRTError
from clip_export.core.manifest import read_manifest
from clip_export.stages import tensorrt as trt_stage
from clip_export.stages.convert import convert_fp16
from clip_export.stages.verify import verify

from ..trt_standin import StandInTensorRT


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> StandInTensorRT:
    fake = StandInTensorRT("10.13.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_stage, "gpu_info", lambda: ("Stand-in GPU (not real)", "9.0"))
    monkeypatch.setattr(trt_runtime, "gpu_info", lambda: ("Stand-in GPU (not real)", "9.0"))
    return fake


def test_tensorrt_10_builds_strongly_typed_with_profile_and_cache(
    tiny_vit_copy: Path, standin: StandInTensorRT
) -> None:
    convert_fp16(tiny_vit_copy)
    result = trt_stage.build_engines(tiny_vit_copy, fp16=True, verify_engines=False)
    assert {e.path for e in result.engines} == {"visual.trt-fp16.plan", "text.trt-fp16.plan"}
    strongly_typed = 1 << int(standin.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert standin.recorded("create_network") == [strongly_typed, strongly_typed]
    assert [Path(p).name for p in standin.recorded("parse_from_file")] == ["visual.fp16.onnx", "text.fp16.onnx"]
    profiles = standin.recorded("add_optimization_profile")
    assert profiles[0] == {"pixel_values": ((1, 3, 64, 64), (1, 3, 64, 64), (64, 3, 64, 64))}
    assert profiles[1] == {"input_ids": ((1, 77), (1, 77), (64, 77))}
    assert standin.recorded("set_memory_pool_limit")[0] == ("WORKSPACE", 4 * 1024**3)
    assert standin.recorded("set_timing_cache") == [False, False]
    assert standin.recorded("create_timing_cache")[0] == b""  # first build: empty cache
    assert standin.recorded("create_timing_cache")[1].startswith(b"STAND-IN-TIMING-CACHE")  # reused
    assert (tiny_vit_copy / trt_stage.TIMING_CACHE_NAME).exists()
    assert "FP16" not in standin.recorded("set_flag")  # precision comes from the typed graph
    entry = read_manifest(tiny_vit_copy).find(path="visual.trt-fp16.plan")
    assert entry is not None and entry.format == "tensorrt" and entry.derived_from["path"] == "visual.fp16.onnx"
    assert entry.detail("tensorrt") == {
        "version": "10.13.0",
        "gpu": "Stand-in GPU (not real)",
        "compute_capability": "9.0",
        "profile": [1, 1, 64],
        "workspace_gb": 4.0,
        "strongly_typed": True,
    }


def test_tensorrt_11_passes_no_removed_flags(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = StandInTensorRT("11.0.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_stage, "gpu_info", lambda: ("Stand-in GPU (not real)", "10.0"))
    trt_stage.build_engines(tiny_vit_copy, towers=["text"], batch=(1, 4, 16), verify_engines=False)
    assert fake.recorded("create_network") == [0]
    assert fake.recorded("clear_flag") == ["TF32"]  # fp32 engine: no TF32 matmuls
    assert fake.recorded("add_optimization_profile") == [{"input_ids": ((1, 77), (4, 77), (16, 77))}]


def test_parser_errors_become_one_clear_error(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(parse_ok=False))
    monkeypatch.setattr(trt_stage, "gpu_info", lambda: ("Stand-in GPU", "9.0"))
    with pytest.raises(TensorRTError, match="could not parse visual.onnx: stand-in parser error"):
        trt_stage.build_engines(tiny_vit_copy, towers=["visual"], verify_engines=False)
    assert read_manifest(tiny_vit_copy).find(format="tensorrt") is None


def test_none_plan_is_an_error_and_leaves_nothing(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT(plan=None))
    monkeypatch.setattr(trt_stage, "gpu_info", lambda: ("Stand-in GPU", "9.0"))
    with pytest.raises(TensorRTError, match="returned None"):
        trt_stage.build_engines(tiny_vit_copy, towers=["visual"], verify_engines=False)
    assert not list(tiny_vit_copy.glob("*.plan"))


def test_unsupported_version(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", StandInTensorRT("8.6.1"))
    monkeypatch.setattr(trt_stage, "gpu_info", lambda: ("Stand-in GPU", "9.0"))
    with pytest.raises(TensorRTError, match="TensorRT 8.6.1 is not supported"):
        trt_stage.build_engines(tiny_vit_copy, verify_engines=False)


def test_fp16_engine_needs_the_fp16_onnx(tiny_vit_copy: Path, standin: StandInTensorRT) -> None:
    with pytest.raises(ManifestError, match="run 'clip-export fp16' first"):
        trt_stage.build_engines(tiny_vit_copy, fp16=True, verify_engines=False)


def test_bad_profile(tiny_vit_copy: Path, standin: StandInTensorRT) -> None:
    with pytest.raises(TensorRTError, match="MIN <= OPT <= MAX"):
        trt_stage.build_engines(tiny_vit_copy, batch=(4, 1, 64), verify_engines=False)


def test_epcontext_wraps_the_engine(tiny_vit_copy: Path, standin: StandInTensorRT) -> None:
    result = trt_stage.build_engines(tiny_vit_copy, towers=["visual"], epcontext=True, verify_engines=False)
    assert result.engines[0].epcontext == "visual.trt-fp32.epcontext.onnx"
    model = onnx.load(str(tiny_vit_copy / "visual.trt-fp32.epcontext.onnx"))
    (node,) = model.graph.node
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert (node.op_type, node.domain) == ("EPContext", "com.microsoft")
    assert (
        attrs["ep_cache_context"] == b"visual.trt-fp32.plan"
        and attrs["embed_mode"] == 0
        and attrs["hardware_architecture"] == b"90"
    )
    assert [i.name for i in model.graph.input] == ["pixel_values"] and [o.name for o in model.graph.output] == [
        "image_embeds"
    ]


def test_engine_built_elsewhere_is_not_runnable_here(
    tiny_vit_copy: Path, standin: StandInTensorRT, monkeypatch: pytest.MonkeyPatch
) -> None:
    trt_stage.build_engines(tiny_vit_copy, towers=["visual"], verify_engines=False)
    monkeypatch.setattr(trt_runtime, "gpu_info", lambda: ("Another GPU", "8.6"))
    result = verify(tiny_vit_copy, write=False)
    row = next(c for c in result.checks if c.format == "tensorrt")
    assert row.status == "not runnable" and "compute capability 9.0" in row.failures[0]
    assert not result.passed


def test_without_tensorrt_the_cli_names_the_extra(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails as if not installed
    with pytest.raises(MissingExtraError):
        trt_runtime.import_tensorrt()
    result = CliRunner().invoke(main, ["trt", str(tiny_vit_copy)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "pip install 'clip-export[tensorrt]'" in result.stderr


@pytest.mark.tensorrt
def test_real_engine_builds_and_verifies(tiny_vit_copy: Path) -> None:
    pytest.importorskip("tensorrt", reason="the tensorrt package is not installed")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs a CUDA GPU, and none is visible")
    convert_fp16(tiny_vit_copy)
    result = trt_stage.build_engines(tiny_vit_copy, fp16=True)
    assert all(e.verdict == "pass" for e in result.engines)


def test_an_engine_goes_through_the_shared_conversion_loop(
    tiny_vit_copy: Path, standin: StandInTensorRT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage is a Derivation of conversion.convert_locked: names from spec.engine_file_name, a build
    that dies leaves neither the engine nor its staging behind, and an engine entry claims no opset."""
    from clip_export.core.spec import engine_file_name

    def dies(*args: object, **kwargs: object) -> bytes:
        raise TensorRTError("the builder ran out of memory")

    monkeypatch.setattr(trt_stage, "build_engine", dies)
    with pytest.raises(TensorRTError, match="ran out of memory"):
        trt_stage.build_engines(tiny_vit_copy, towers=["visual"], verify_engines=False)
    assert sorted(p.name for p in tiny_vit_copy.iterdir() if ".trt-" in p.name or p.name.startswith(".convert")) == []
    assert read_manifest(tiny_vit_copy).find(format="tensorrt") is None
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "tensorrt", standin)
    monkeypatch.setattr(trt_stage, "gpu_info", lambda: ("Stand-in GPU (not real)", "9.0"))
    result = trt_stage.build_engines(tiny_vit_copy, towers=["visual"], verify_engines=False)
    assert [e.path for e in result.engines] == [engine_file_name("visual.onnx", "fp32")]
    assert result.engines[0].verdict == "not verified"
    assert read_manifest(tiny_vit_copy).find(path="visual.trt-fp32.plan").opset is None
    assert "opset" not in json.loads((tiny_vit_copy / "manifest.json").read_text())["artifacts"][-1]
