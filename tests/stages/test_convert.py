from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clip_export.core import conversion
from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import ArtifactCheck
from clip_export.core.errors import ConversionError, IntegrityError, OutputError
from clip_export.core.manifest import read_manifest
from clip_export.core.sessions import FP16_DISABLED_OPTIMIZERS, SessionOptions, create_session
from clip_export.stages.convert import convert_fp16, to_fp16
from clip_export.stages.verify import verify

from ..helpers import flip_byte


def test_fp16_towers_pass_verify_and_keep_float32_io(tiny_vit_copy: Path) -> None:
    result = convert_fp16(tiny_vit_copy)
    assert {a.path for a in result.artifacts} == {"visual.fp16.onnx", "text.fp16.onnx"}
    assert all(a.verdict == "pass" and a.min_top1 == 1.0 for a in result.artifacts)
    manifest = read_manifest(tiny_vit_copy)
    entry = manifest.find(path="text.fp16.onnx")
    assert entry is not None and entry.precision == "fp16" and entry.derived_from["path"] == "text.onnx"
    assert entry.inputs[0].dtype == "int64" and entry.outputs[0].dtype == "float32"
    model = onnx.load(str(tiny_vit_copy / "text.fp16.onnx"))
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer)
    assert verify(tiny_vit_copy).passed


def test_fp16_of_a_tower_with_external_data_infers_shapes_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Towers over 2 GiB are stored with external data, and onnxconverter-common's in-memory shape
    inference serialises the whole model, which fails past protobuf's limit ('Failed to serialize
    proto', ViT-H-14's image tower). Those towers' shapes are inferred file to file; the fp16 graph
    is the one the in-memory route gives, and nothing is left beside the source."""
    from clip_export import export_onnx, resolve
    from clip_export.stages.convert import load_with_shapes

    model_dir = export_onnx(
        resolve("tiny-vit", random_init=True, seed=0), out=tmp_path, towers=["visual"], external_data=True
    ).model_dir
    from_file, inferred = load_with_shapes(model_dir / "visual.onnx")
    assert inferred
    in_memory = to_fp16(onnx.load(str(model_dir / "visual.onnx")))[0]
    assert to_fp16(from_file, shapes_inferred=True)[0].graph.SerializeToString() == in_memory.graph.SerializeToString()

    def too_big(*args: object, **kwargs: object) -> None:
        raise ValueError("Failed to serialize proto")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", too_big)
    before = sorted(p.name for p in model_dir.iterdir())
    assert convert_fp16(model_dir, towers=["visual"]).artifacts[0].verdict == "pass"
    assert sorted(p.name for p in model_dir.iterdir()) == sorted([*before, "visual.fp16.onnx"])


def test_eot_argmax_never_sees_fp16(tiny_vit_copy: Path) -> None:
    """In fp16, token ids 49406 and 49407 are the same number; pooling must stay on integers."""
    assert np.float16(49406) == np.float16(49407)
    convert_fp16(tiny_vit_copy, towers=["text"])
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_vit_copy / "text.fp16.onnx")))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    argmax = [n for n in model.graph.node if n.op_type == "ArgMax"]
    assert argmax and all(types[n.input[0]] == TensorProto.INT64 for n in argmax)


def test_fp16_session_avoids_the_nchwc_crash(tiny_vit_copy: Path, tmp_path: Path) -> None:
    """onnxruntime's NchwcTransformer crashes on fp16 ViT graphs; our sessions disable it.

    Runs in a child process so that a regression shows as a failed test, not a dead pytest.
    """
    assert "NchwcTransformer" in FP16_DISABLED_OPTIMIZERS
    convert_fp16(tiny_vit_copy, towers=["visual"])
    script = (
        "import numpy as np, sys\n"
        "from clip_export.core.sessions import SessionOptions, create_session\n"
        "s = create_session(sys.argv[1], SessionOptions(precision='fp16'))\n"
        "print(s.run(None, {'pixel_values': np.zeros((1, 3, 64, 64), np.float32)})[0].shape)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tiny_vit_copy / "visual.fp16.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "(1, 32)" in done.stdout


def test_source_cast_to_float_stays_float32() -> None:
    """onnxconverter-common 1.15+ retypes a source Cast(to=float) to fp16; we keep it fp32."""
    weight = numpy_helper.from_array(np.ones((4, 2), np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["as_float"], name="cast_ids", to=TensorProto.FLOAT),
            helper.make_node("MatMul", ["as_float", "w"], ["out"], name="mm"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 2])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    converted, details = to_fp16(model)
    assert "cast_ids" in details["fp32_nodes"]
    import onnxruntime

    session = onnxruntime.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"ids": np.array([[1, 2, 3, 4]], np.int64)})[0]
    assert out.dtype == np.float32 and np.allclose(out, [[10.0, 10.0]])


def test_converting_twice_needs_force(tiny_vit_copy: Path) -> None:
    convert_fp16(tiny_vit_copy, towers=["visual"])
    with pytest.raises(OutputError, match="already exists in the manifest; pass --force"):
        convert_fp16(tiny_vit_copy, towers=["visual"])
    convert_fp16(tiny_vit_copy, towers=["visual"], force=True)
    assert [a.path for a in read_manifest(tiny_vit_copy).artifacts].count("visual.fp16.onnx") == 1


def test_tampered_source_refuses_to_start(tiny_vit_copy: Path) -> None:
    flip_byte(tiny_vit_copy / "visual.onnx")
    with pytest.raises(IntegrityError, match="visual.onnx"):
        convert_fp16(tiny_vit_copy, towers=["visual"])
    assert not (tiny_vit_copy / "visual.fp16.onnx").exists()


def test_failed_gate_leaves_no_entry_and_no_file(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_gate(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
        return ArtifactCheck(
            entry.path,
            entry.tower,
            entry.precision,
            "onnx",
            "cpu",
            "CPUExecutionProvider",
            "fail",
            failures=("min_cosine = 0.5 (limit >= 0.999)",),
        )

    monkeypatch.setattr(conversion, "gate", failing_gate)
    before = read_manifest(tiny_vit_copy)
    with pytest.raises(ConversionError, match="failed verification.*min_cosine"):
        convert_fp16(tiny_vit_copy, towers=["visual"])
    assert read_manifest(tiny_vit_copy) == before
    assert sorted(p.name for p in tiny_vit_copy.iterdir()) == sorted(
        ["manifest.json", "reference.npz", "text.onnx", "tokenizer.json", "visual.onnx"]
    )


def test_fuse_reports_fusions(tiny_vit_copy: Path) -> None:
    result = convert_fp16(tiny_vit_copy, towers=["visual"], fuse=True)
    fusions = result.artifacts[0].details["fusions"]
    assert fusions.get("SkipLayerNormalization", 0) > 0
    assert fusions.get("MultiHeadAttention (clip-export)") == 2  # tiny-vit has two blocks
    assert result.artifacts[0].verdict == "pass"
    session = create_session(tiny_vit_copy / "visual.fp16.onnx", SessionOptions(precision="fp16"))
    assert session.run(None, {"pixel_values": np.zeros((2, 3, 64, 64), np.float32)})[0].shape == (2, 32)
