from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clip_export.core import checks, conversion
from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import ArtifactCheck
from clip_export.core.environment import current_environment
from clip_export.core.errors import ConversionError, IntegrityError, OutputError
from clip_export.core.graph_surgery import quantizer_exclusions
from clip_export.core.manifest import read_manifest
from clip_export.core.sessions import FP16_DISABLED_OPTIMIZERS, SessionOptions, create_session
from clip_export.core.spec import INT8_FAMILIES
from clip_export.stages import convert as convert_stage
from clip_export.stages.convert import INT8_OP_TYPES, convert_fp16, quantize_int8, to_fp16
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


def test_int8_is_smaller_and_passes_its_thresholds(tiny_vit_copy: Path) -> None:
    """One artifact per kernel family (this CPU has VNNI or the VNNI one is skipped with a note)."""
    result = quantize_int8(tiny_vit_copy)
    assert all(a.verdict == "pass" for a in result.artifacts)
    vnni_here = INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags)
    expected = {
        f"{t}.{tag}.onnx" for t in ("visual", "text") for tag in (("int8", "uint8") if vnni_here else ("uint8",))
    }
    assert {a.path for a in result.artifacts} == expected
    assert bool(result.notes) is not vnni_here
    manifest = read_manifest(tiny_vit_copy)
    for path, weight_type, family in (
        ("visual.uint8.onnx", "QUInt8", "any-x86"),
        ("visual.int8.onnx", "QInt8", "vnni"),
    ):
        entry = manifest.find(path=path)
        if entry is None:
            continue
        assert (
            entry.detail("conversion")["weight_type"] == weight_type
            and entry.detail("conversion")["kernel_family"] == family
        )
        assert entry.detail("conversion")["verified_on"] == [current_environment("CPUExecutionProvider").tier]
        assert entry.detail("conversion")["requires_any_cpu_flag"] == list(INT8_FAMILIES[family].requires_any_flag)
    assert manifest.find(path="visual.int8.onnx") is None or "avx2" not in str(
        manifest.find(path="visual.int8.onnx").detail("conversion")["for_cpus"]
    )
    entry = manifest.find(path="visual.uint8.onnx")
    assert entry is not None and entry.detail("conversion")["per_channel"] is True
    source = read_manifest(tiny_vit_copy).find(path="visual.onnx")
    assert entry.bytes < source.bytes
    ops = {n.op_type for n in onnx.load(str(tiny_vit_copy / "visual.uint8.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert verify(tiny_vit_copy).passed


def test_the_vnni_family_is_not_applicable_on_a_cpu_without_vnni(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """QInt8 weights are never claimed for AVX2: there, int8 skips that family with a note, and
    verify marks an existing QInt8 artifact not applicable (no pass, no failure) for that tier."""
    quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["vnni"].scheme)
    avx2 = dataclasses.replace(
        current_environment("CPUExecutionProvider"), cpu_target="haswell", isa_flags=("avx2", "fma")
    )
    for module in (checks, convert_stage):
        monkeypatch.setattr(module, "current_environment", lambda provider=None: avx2)
    result = quantize_int8(tiny_vit_copy, towers=["text"])
    assert [a.path for a in result.artifacts] == ["text.uint8.onnx"]
    assert result.notes == (
        "int8 (QInt8 per-channel, for x86 with VNNI or AMX (avx512_vnni, avx_vnni, amx_int8)) not built: this CPU (AVX2 without VNNI) cannot verify it",
    )
    report = verify(tiny_vit_copy, only=lambda e: e.precision == "int8", write=False)
    statuses = {c.path: c.status for c in report.checks if c.precision == "int8"}
    assert statuses == {"text.int8.onnx": "not applicable", "text.uint8.onnx": "pass"}
    assert report.passed and not report.failures
    assert "AVX2 without VNNI" in report.not_applicable[0] and "avx512_vnni" in report.not_applicable[0]


def test_a_tower_whose_int8_fails_every_gate_is_named_and_the_rest_kept(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained text towers can miss the int8 gate with every scheme (docs/convert.md): int8 then says
    so in one line per family for that tower, keeps the visual artifacts, and records the tower in
    the manifest's int8_not_built (the model card's reason); a later pass takes it off."""
    real_gate = conversion.gate

    def text_fails(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
        if entry.tower == "text":
            return dataclasses.replace(
                real_gate(model_dir, entry, provider), status="fail", failures=("mean_abs_normalized = 0.0057",)
            )
        return real_gate(model_dir, entry, provider)

    monkeypatch.setattr(conversion, "gate", text_fails)
    result = quantize_int8(tiny_vit_copy, scheme=INT8_FAMILIES["any-x86"].scheme)
    assert [a.path for a in result.artifacts] == ["visual.uint8.onnx"]
    (note,) = result.notes
    assert note.startswith(
        "text: uint8 (QUInt8 per-channel) not kept: text.uint8.onnx failed verification, so it was not kept: mean_abs_normalized = 0.0057; with up to "
    ) and note.endswith("MatMuls float (most sensitive first) it still failed")
    manifest = read_manifest(tiny_vit_copy)
    assert (
        list(manifest.section("int8_not_built")) == ["text"] and "0.0057" in manifest.section("int8_not_built")["text"]
    )
    assert manifest.find(path="text.uint8.onnx") is None and not (tiny_vit_copy / "text.uint8.onnx").exists()
    with pytest.raises(ConversionError, match="the int8 gate failed for every tower and scheme"):
        quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    monkeypatch.setattr(conversion, "gate", real_gate)
    quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    assert read_manifest(tiny_vit_copy).section("int8_not_built") is None


def test_a_plain_scheme_that_fails_is_kept_with_its_most_sensitive_matmul_float(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback that held on trained MiniLM-L6 (2 of 36 float, docs/convert.md), here with a gate
    that fails every plain text artifact: the first retry keeps one MatMul float and is recorded."""
    real_gate = conversion.gate

    def plain_text_fails(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
        check = real_gate(model_dir, entry, provider)
        if entry.tower == "text" and "mixed_precision" not in entry.detail("conversion"):
            return dataclasses.replace(check, status="fail", failures=("mean_abs_normalized = 0.0047",))
        return check

    monkeypatch.setattr(conversion, "gate", plain_text_fails)
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    (note,) = result.notes
    assert note.startswith("text: uint8 (QUInt8 per-channel) failed its gate plain; kept with 1 of ")
    mixed = read_manifest(tiny_vit_copy).find(path="text.uint8.onnx").detail("conversion")["mixed_precision"]
    (kept,) = mixed["float_matmuls"]
    assert mixed["weight_matmuls"] > 1 and kept in mixed["sensitivity"] and "0.0047" in mixed["plain_failure"]
    graph = onnx.load(str(tiny_vit_copy / "text.uint8.onnx")).graph
    assert next(n for n in graph.node if n.name == kept).op_type == "MatMul"  # still float


def test_an_excluded_gemm_stays_float_although_the_quantizer_renames_it(tmp_path: Path) -> None:
    """quantize_dynamic turns Gemm `proj` into MatMul `proj_MatMul` before reading nodes_to_exclude."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="proj", transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert quantizer_exclusions(model, ["proj", "other"]) == ["proj", "proj_MatMul", "other"]
    quantized_ops = {}
    for label, excluded in (("by name", ["proj"]), ("with its alias", quantizer_exclusions(model, ["proj"]))):
        quantize_dynamic(
            model,
            str(tmp_path / "q.onnx"),
            weight_type=QuantType.QUInt8,
            op_types_to_quantize=list(INT8_OP_TYPES),
            nodes_to_exclude=excluded,
        )
        quantized_ops[label] = {n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert "MatMulInteger" in quantized_ops["by name"]  # the quantizer's behaviour this works around
    assert not quantized_ops["with its alias"] & {"MatMulInteger", "DynamicQuantizeMatMul"}


def test_fuse_reports_fusions(tiny_vit_copy: Path) -> None:
    result = convert_fp16(tiny_vit_copy, towers=["visual"], fuse=True)
    fusions = result.artifacts[0].details["fusions"]
    assert fusions.get("SkipLayerNormalization", 0) > 0
    assert fusions.get("MultiHeadAttention (clip-export)") == 2  # tiny-vit has two blocks
    assert result.artifacts[0].verdict == "pass"
    session = create_session(tiny_vit_copy / "visual.fp16.onnx", SessionOptions(precision="fp16"))
    assert session.run(None, {"pixel_values": np.zeros((2, 3, 64, 64), np.float32)})[0].shape == (2, 32)
