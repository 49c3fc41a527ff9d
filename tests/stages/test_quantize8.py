"""The INT8 stage: one artifact per kernel family, each gated; what happens when a gate fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clip_export.core import checks, conversion
from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import ArtifactCheck
from clip_export.core.environment import current_environment
from clip_export.core.errors import ConversionError
from clip_export.core.graph_surgery import quantizer_exclusions
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import INT8_BLOCKWISE, INT8_FAMILIES
from clip_export.stages import quantize8
from clip_export.stages.quantize8 import INT8_OP_TYPES, quantize_int8
from clip_export.stages.release.hf_layout import onnx_file_name
from clip_export.stages.verify import verify

from ..helpers import fail_gate_where


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
    for module in (checks, quantize8):
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
    restore_gate = fail_gate_where(monkeypatch, lambda entry: entry.tower == "text", "mean_abs_normalized = 0.0057")
    result = quantize_int8(tiny_vit_copy, scheme=INT8_FAMILIES["any-x86"].scheme)
    assert [a.path for a in result.artifacts] == ["visual.uint8.onnx"]
    (note,) = result.notes
    assert note.startswith(
        "text: uint8 (QUInt8 per-channel) not kept: text.uint8.onnx failed verification, so it was not kept: "
        f"mean_abs_normalized = 0.0057; {INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0057; with up to "
    ) and note.endswith("MatMuls float (most sensitive first) it still failed")
    manifest = read_manifest(tiny_vit_copy)
    assert (
        list(manifest.section("int8_not_built")) == ["text"] and "0.0057" in manifest.section("int8_not_built")["text"]
    )
    assert manifest.find(path="text.uint8.onnx") is None and not (tiny_vit_copy / "text.uint8.onnx").exists()
    with pytest.raises(ConversionError, match="the int8 gate failed for every tower and scheme"):
        quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    restore_gate()
    quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    assert read_manifest(tiny_vit_copy).section("int8_not_built") is None


def test_a_plain_scheme_that_fails_is_kept_with_its_most_sensitive_matmul_float(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last fallback (2 of 36 float held on trained MiniLM-L6, docs/convert.md), here with a gate
    that fails every plain and blockwise text artifact: the first retry keeps one MatMul float and is recorded."""
    fail_gate_where(
        monkeypatch, lambda entry: entry.tower == "text" and "mixed_precision" not in entry.detail("conversion")
    )
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    (note,) = result.notes
    assert note.startswith(
        f"text: uint8 (QUInt8 per-channel) failed its gate plain; {INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0047; "
        "kept with 1 of "
    )
    mixed = read_manifest(tiny_vit_copy).find(path="text.uint8.onnx").detail("conversion")["mixed_precision"]
    (kept,) = mixed["float_matmuls"]
    assert mixed["weight_matmuls"] > 1 and kept in mixed["sensitivity"] and "0.0047" in mixed["plain_failure"]
    assert mixed["blockwise_failure"] == f"{INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0047"
    graph = onnx.load(str(tiny_vit_copy / "text.uint8.onnx")).graph
    assert next(n for n in graph.node if n.name == kept).op_type == "MatMul"  # still float


def test_a_plain_scheme_that_fails_is_kept_blockwise_with_every_matmul_quantized(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback that held on trained MiniLM-L6 with a wide margin (docs/convert.md): when the plain
    text artifact fails, blockwise 8-bit MatMulNBits is tried next, through the unchanged gate, and
    kept with its record; the release names it by its family, and verify passes it."""
    real_gate = conversion.gate
    gated_modes = []

    def plain_text_fails(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
        check = real_gate(model_dir, entry, provider)
        gated_modes.append(entry.detail("conversion")["mode"])
        if entry.tower == "text" and entry.detail("conversion")["mode"] != "blockwise":
            return dataclasses.replace(check, status="fail", failures=("mean_abs_normalized = 0.0047",))
        return check

    monkeypatch.setattr(conversion, "gate", plain_text_fails)
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    assert gated_modes == ["dynamic", "blockwise"]  # no sensitivity search once blockwise held
    (note,) = result.notes
    (artifact,) = result.artifacts
    assert artifact.path == "text.uint8.onnx" and artifact.verdict == "pass"
    entry = read_manifest(tiny_vit_copy).find(path="text.uint8.onnx")
    record = entry.detail("conversion")
    graph = onnx.load(str(tiny_vit_copy / "text.uint8.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert record["mode"] == "blockwise" and record["kernel_family"] == "any-x86"
    assert record["block_size"] == INT8_BLOCKWISE.block_size
    assert record["matmul_nbits_nodes"] == record["weight_matmuls"] == len(nbits) > 0  # ViT text: no Gemm
    assert note == (
        f"text: uint8 (QUInt8 per-channel) failed its gate plain; kept as {INT8_BLOCKWISE.label}, {len(nbits)} of "
        f"{len(nbits)} weight MatMuls quantized"
    )
    assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {INT8_BLOCKWISE.bits}
    assert "0.0047" in record["plain_failure"]
    assert not {n.op_type for n in graph.node} & {"DynamicQuantizeMatMul", "MatMulInteger"}
    assert onnx_file_name(entry) == "text_model_uint8.onnx"
    monkeypatch.setattr(conversion, "gate", real_gate)
    assert verify(tiny_vit_copy, only=lambda e: e.path == "text.uint8.onnx", write=False).passed


def test_a_default_run_builds_the_fallback_once_under_the_every_x86_name(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a scheme, a family with CPU requirements whose plain file fails is not built: the
    every-x86 file and its fallbacks serve those CPUs too (one file, one gate run, no duplicate)."""
    fail_gate_where(monkeypatch, lambda entry: entry.detail("conversion")["mode"] != "blockwise")
    result = quantize_int8(tiny_vit_copy, towers=["text"])
    assert [a.path for a in result.artifacts] == ["text.uint8.onnx"]
    vnni_note, uint8_note = result.notes
    assert vnni_note.startswith("text: int8 (QInt8 per-channel) failed its gate plain; not built: the uint8 file") or (
        vnni_note.startswith("int8 (QInt8 per-channel") and "cannot verify it" in vnni_note  # a CPU without VNNI
    )
    assert uint8_note.startswith(
        f"text: uint8 (QUInt8 per-channel) failed its gate plain; kept as {INT8_BLOCKWISE.label}"
    )
    manifest = read_manifest(tiny_vit_copy)
    assert manifest.find(path="text.int8.onnx") is None and manifest.section("int8_not_built") is None


def test_blockwise_that_onnxruntime_cannot_build_falls_to_mixed_precision_with_the_reason(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error from onnxruntime's quantizer or kernels in the blockwise step is recorded and the
    mixed-precision search runs; it does not stop `int8` for every tower."""

    def no_8bit_kernel(*args: object, **kwargs: object) -> None:
        raise RuntimeError("MatMulNBits: bits 8 is not supported")

    fail_gate_where(
        monkeypatch, lambda entry: entry.tower == "text" and "mixed_precision" not in entry.detail("conversion")
    )
    monkeypatch.setattr(quantize8, "quantize_blockwise", no_8bit_kernel)
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    (note,) = result.notes
    assert f"{INT8_BLOCKWISE.label}: RuntimeError: MatMulNBits: bits 8 is not supported; kept with 1 of " in note
    mixed = read_manifest(tiny_vit_copy).find(path="text.uint8.onnx").detail("conversion")["mixed_precision"]
    assert "RuntimeError" in mixed["blockwise_failure"]


def test_an_explicit_scheme_keeps_its_weight_type_in_the_fallback(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--weight-type QInt8 builds only that family: where it fails, mixed precision (still QInt8
    weights) is the fallback, not blockwise."""
    if not INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags):
        pytest.skip("this CPU has no VNNI, so int8 does not build (or claim) the QInt8 artifact here")
    fail_gate_where(
        monkeypatch, lambda entry: entry.tower == "text" and "mixed_precision" not in entry.detail("conversion")
    )
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["vnni"].scheme)
    (note,) = result.notes
    assert "not tried for int8, which keeps its weight type; kept with 1 of " in note
    record = read_manifest(tiny_vit_copy).find(path="text.int8.onnx").detail("conversion")
    assert record["weight_type"] == "QInt8" and record["mixed_precision"]["float_matmuls"]


def test_blockwise_is_tried_only_where_it_would_quantize_the_weights(tiny_vit_copy: Path, tmp_path: Path) -> None:
    """MatMulNBits covers MatMul, not Gemm: a tower whose weights are Gemms or convolutions (timm's
    MobileCLIP image tower) would pass the gate mostly float, so blockwise is not tried there; nor
    for a family with CPU requirements, which keeps its weight type."""
    from clip_export import export_onnx, resolve

    assert quantize8._blockwise_not_for(tiny_vit_copy, "text", quantize8.EVERY_X86, []) is None
    assert "keeps its weight type" in str(
        quantize8._blockwise_not_for(tiny_vit_copy, "text", INT8_FAMILIES["vnni"], [])
    )
    mobileclip = export_onnx(resolve("tiny-MobileCLIP", random_init=True), out=tmp_path).model_dir
    why = quantize8._blockwise_not_for(mobileclip, "visual", quantize8.EVERY_X86, [])
    assert why == f"{INT8_BLOCKWISE.label}: not tried, visual has no weight MatMul for it to quantize"


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
