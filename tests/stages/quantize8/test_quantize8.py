"""The INT8 stage: one artifact per kernel family, each gated; a tower no scheme holds for is named."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
import pytest

from clip_export.core import checks
from clip_export.core.environment import current_environment
from clip_export.core.errors import ConversionError
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import INT8_BLOCKWISE, INT8_FAMILIES, INT8_OUTLIER_SPLIT
from clip_export.stages.quantize8 import int8_build, quantize8
from clip_export.stages.quantize8.quantize8 import quantize_int8
from clip_export.stages.verify import verify

from ...helpers import fail_gate_where


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
        assert entry.detail("conversion")["verified_on"] == [current_environment("CPUExecutionProvider").tier_label]
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
    for module in (checks, quantize8, int8_build):
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
        f"mean_abs_normalized = 0.0057; {INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0057; "
        f"{INT8_OUTLIER_SPLIT.label}: not tried, no activation channel of text is that wide on 32 reference inputs; "
        "with up to "
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
