"""INT8's fallbacks when a plain scheme fails its gate: blockwise, the outlier split, mixed precision."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest

from clip_export.core import conversion
from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import ArtifactCheck
from clip_export.core.environment import current_environment
from clip_export.core.manifest import read_manifest
from clip_export.core.metrics import l2_normalize
from clip_export.core.runner import open_graph
from clip_export.core.spec import INT8_BLOCKWISE, INT8_FAMILIES, INT8_OUTLIER_SPLIT
from clip_export.stages.quantize8 import int8_build, int8_fallbacks
from clip_export.stages.quantize8.int8_build import EVERY_X86
from clip_export.stages.quantize8.quantize8 import quantize_int8
from clip_export.stages.release.hf_layout import onnx_file_name
from clip_export.stages.release.model_card import int8_section
from clip_export.stages.verify import verify

from ...helpers import fail_gate_where


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
        f"{INT8_OUTLIER_SPLIT.label}: not tried, no activation channel of text is that wide on 32 reference inputs; "
        "kept with 1 of "
    )
    mixed = read_manifest(tiny_vit_copy).find(path="text.uint8.onnx").detail("conversion")["mixed_precision"]
    (kept,) = mixed["float_matmuls"]
    assert mixed["weight_matmuls"] > 1 and kept in mixed["sensitivity"] and "0.0047" in mixed["plain_failure"]
    assert mixed["fallback_failures"][0] == f"{INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0047"
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
    assert (
        vnni_note.startswith("text: int8 (QInt8 per-channel) not kept: text.int8.onnx failed verification")
        and "mean_abs_normalized = 0.0047; " in vnni_note  # the plain failure's figures stay in the note
        and "; not built: the uint8 file, with its fallbacks, serves x86 with VNNI" in vnni_note
    ) or (
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
    monkeypatch.setattr(int8_build, "quantize_blockwise", no_8bit_kernel)
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["any-x86"].scheme)
    (note,) = result.notes
    assert f"{INT8_BLOCKWISE.label}: RuntimeError: MatMulNBits: bits 8 is not supported; " in note
    assert "; kept with 1 of " in note
    mixed = read_manifest(tiny_vit_copy).find(path="text.uint8.onnx").detail("conversion")["mixed_precision"]
    assert "RuntimeError" in mixed["fallback_failures"][0]


def test_an_explicit_scheme_keeps_its_weight_type_in_the_fallback(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--weight-type QInt8 builds only that family: where it fails, mixed precision (still QInt8
    weights) is the last fallback, not blockwise."""
    if not INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags):
        pytest.skip("this CPU has no VNNI, so int8 does not build (or claim) the QInt8 artifact here")
    fail_gate_where(
        monkeypatch, lambda entry: entry.tower == "text" and "mixed_precision" not in entry.detail("conversion")
    )
    result = quantize_int8(tiny_vit_copy, towers=["text"], scheme=INT8_FAMILIES["vnni"].scheme)
    (note,) = result.notes
    assert INT8_BLOCKWISE.label not in note and "; kept with 1 of " in note
    record = read_manifest(tiny_vit_copy).find(path="text.int8.onnx").detail("conversion")
    assert record["weight_type"] == "QInt8" and record["mixed_precision"]["float_matmuls"]


def test_blockwise_is_tried_only_where_it_would_quantize_the_weights(tiny_vit_copy: Path, tmp_path: Path) -> None:
    """MatMulNBits covers MatMul, not Gemm: a tower whose weights are Gemms or convolutions (timm's
    MobileCLIP image tower) would pass the gate mostly float, so blockwise is not tried there."""
    from clip_export import export_onnx, resolve

    assert int8_fallbacks.blockwise_not_for(tiny_vit_copy, "text", []) is None
    mobileclip = export_onnx(resolve("tiny-MobileCLIP", random_init=True), out=tmp_path).model_dir
    why = int8_fallbacks.blockwise_not_for(mobileclip, "visual", [])
    assert why == f"{INT8_BLOCKWISE.label}: not tried, visual has no weight MatMul for it to quantize"


# One channel of every text MLP input scaled 20x: the kind of outlier channel trained transformers
# carry (MiniLM-L6's FFN inputs reach 17-19x their median channel) and random weights lack. Measured
# on this tiny ViT: plain QInt8 fails the gate, the split holds at 2.7e-3, blockwise at 3.4e-3.
OUTLIER_CHANNELS = (41,)


@pytest.fixture(scope="module")
def tiny_vit_with_outliers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from clip_export import export_onnx, resolve
    from clip_export.core.models import load_model

    spec = resolve("tiny-vit", random_init=True, seed=0)
    loaded = load_model(spec)
    with torch.no_grad():
        for block in loaded.model.transformer.resblocks:
            block.ln_2.weight[list(OUTLIER_CHANNELS)] *= 20.0
    return export_onnx(spec, out=tmp_path_factory.mktemp("outliers"), loaded=loaded).model_dir


def _quantized_matmuls(path: Path) -> int:
    return sum(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in onnx.load(str(path)).graph.node)


def test_outlier_channels_are_split_off_in_float_with_every_matmul_still_quantized(
    tiny_vit_with_outliers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the plain file and blockwise fail, the channels measured wide leave the quantized MatMuls
    for float ones beside them (the same weight type, every weight MatMul still quantized), through
    the real gate; the record names each tensor's channels, and verify passes the file."""
    import shutil

    model_dir = tmp_path / "outliers"
    shutil.copytree(tiny_vit_with_outliers, model_dir)
    restore = fail_gate_where(
        monkeypatch, lambda entry: entry.tower == "text" and "outlier_split" not in entry.detail("conversion")
    )
    scheme = INT8_FAMILIES["any-x86"].scheme
    result = quantize_int8(model_dir, towers=["text"], scheme=scheme)
    (artifact,) = result.artifacts
    (note,) = result.notes
    record = read_manifest(model_dir).find(path="text.uint8.onnx").detail("conversion")
    split = record["outlier_split"]
    assert artifact.verdict == "pass" and record["weight_type"] == "QUInt8" and record["mode"] == "dynamic"
    mlp_inputs = [t for t, channels in split["channels"].items() if channels == list(OUTLIER_CHANNELS)]
    assert len(mlp_inputs) == 2  # one per text layer; other tensors may carry a channel the scaling widened
    channels = sum(len(c) for c in split["channels"].values())
    assert note == (
        f"text: uint8 (QUInt8 per-channel) failed its gate plain; {INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0047; "
        f"kept with {channels} outlier channels of {len(split['channels'])} activations split off in float, every "
        "weight MatMul quantized"
    )
    assert split["fallback_failures"] == [f"{INT8_BLOCKWISE.label}: mean_abs_normalized = 0.0047"]
    graph = onnx.load(str(model_dir / "text.uint8.onnx")).graph
    float_parts = [n for n in graph.node if n.name.endswith("/outlier_matmul")]
    assert float_parts and all(n.op_type == "MatMul" for n in float_parts)
    plain = tmp_path / "plain.onnx"
    int8_build.quantize_weights(onnx.load(str(model_dir / "text.onnx")), plain, scheme, [])
    excluded_by_default = 1  # the final projection (int8_excluded_nodes)
    assert _quantized_matmuls(model_dir / "text.uint8.onnx") == _quantized_matmuls(plain) - excluded_by_default
    ids, expected = int8_build.reference_inputs(model_dir, "text", 48)
    plain_error = float(np.abs(l2_normalize(open_graph(plain).run(ids)) - l2_normalize(expected)).mean())
    assert artifact.mean_abs_normalized < 0.75 * plain_error  # the split is what holds, not a lenient gate
    restore()
    assert verify(model_dir, only=lambda e: e.path == "text.uint8.onnx", write=False).passed


def test_a_default_run_keeps_the_vnni_file_with_its_outliers_split_off(
    tiny_vit_with_outliers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a plain QInt8 file fails, the outlier split keeps the fast family (its weight type) instead
    of leaving VNNI CPUs the every-x86 file; the every-x86 file is still built blockwise first."""
    import shutil

    if not INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags):
        pytest.skip("this CPU has no VNNI, so int8 does not build (or claim) the QInt8 artifact here")
    model_dir = tmp_path / "outliers"
    shutil.copytree(tiny_vit_with_outliers, model_dir)
    fail_gate_where(
        monkeypatch,
        lambda entry: (
            entry.tower == "text"
            and entry.detail("conversion")["mode"] != "blockwise"
            and "outlier_split" not in entry.detail("conversion")
        ),
    )
    result = quantize_int8(model_dir, towers=["text"])
    assert [a.path for a in result.artifacts] == ["text.int8.onnx", "text.uint8.onnx"]
    vnni_note, uint8_note = result.notes
    assert vnni_note.startswith("text: int8 (QInt8 per-channel) failed its gate plain; ")
    assert vnni_note.endswith("activations split off in float, every weight MatMul quantized")
    assert f"kept as {INT8_BLOCKWISE.label}" in uint8_note
    record = read_manifest(model_dir).find(path="text.int8.onnx").detail("conversion")
    assert record["weight_type"] == "QInt8" and record["kernel_family"] == "vnni" and record["outlier_split"]
    card = "\n".join(int8_section(read_manifest(model_dir)))  # what the release's model card says of them
    assert "| text.int8.onnx | text | QInt8, outlier channels split off | x86 with VNNI or AMX" in card
    assert "Weights marked with outlier channels split off are INT8's fallback" in card


def test_the_split_is_not_tried_where_no_channel_stands_out(tiny_vit_copy: Path) -> None:
    """Random weights have no outlier channels: the step says so and costs no gate run."""
    build = int8_build.Build(tiny_vit_copy, EVERY_X86, EVERY_X86.scheme, (), False, lambda message: None)
    why = int8_fallbacks._outlier_split_attempt(build, "text", "plain failure", [])
    assert (
        why
        == f"{INT8_OUTLIER_SPLIT.label}: not tried, no activation channel of text is that wide on 32 reference inputs"
    )
