"""Real architectures with random weights, end to end. Minutes on 2 cores: `pytest -m slow`."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_export import export_onnx, resolve
from clip_export.core.spec import EXPORT_PARITY_TOLERANCE
from clip_export.stages.convert import convert_fp16
from clip_export.stages.quantize8.quantize8 import quantize_int8
from clip_export.stages.verify import verify

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("model", ["ViT-B/32", "RN50"])
def test_real_architecture_exports_converts_and_verifies(model: str, tmp_path: Path) -> None:
    result = export_onnx(resolve(model, random_init=True), out=tmp_path)
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)
    convert_fp16(result.model_dir)
    quantize_int8(result.model_dir)
    report = verify(result.model_dir)
    assert report.passed, report.failures
    assert {c.precision for c in report.checks} == {"fp32", "fp16", "int8"}
