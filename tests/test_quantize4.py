"""4-bit MatMulNBits artifacts: smaller, gated by their own thresholds, composable with preprocessing."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
from click.testing import CliRunner

from clip_export.cli import main
from clip_export.manifest import find_artifact, read_manifest
from clip_export.preprocess_stage import add_preprocessing
from clip_export.quantize4 import quantize_q4
from clip_export.spec import THRESHOLDS
from clip_export.verify import verify


def test_q4_passes_its_gate_and_is_smaller(tiny_vit_copy: Path) -> None:
    result = quantize_q4(tiny_vit_copy)
    limits = THRESHOLDS["q4"]
    manifest = read_manifest(tiny_vit_copy)
    for artifact in result.artifacts:
        assert artifact.verdict == "pass" and artifact.mean_abs_normalized <= limits.mean_abs_normalized
        source = find_artifact(manifest, path=artifact.source)
        assert artifact.bytes < source["bytes"]
        nodes = [n.op_type for n in onnx.load(str(tiny_vit_copy / artifact.path)).graph.node]
        assert nodes.count("MatMulNBits") == artifact.details["matmul_nbits_nodes"] > 0
    visual = find_artifact(manifest, path="visual.q4.onnx")
    assert visual["precision"] == "q4" and visual["bytes"] < 0.6 * find_artifact(manifest, path="visual.onnx")["bytes"]
    checks = {c.path: c for c in verify(tiny_vit_copy, write=False).checks}
    assert checks["text.q4.onnx"].passed and checks["text.q4.onnx"].threshold_set == "q4"


def test_q4_composes_with_the_preprocessing_graph(tiny_vit_copy: Path) -> None:
    quantize_q4(tiny_vit_copy, towers=("visual",))
    [result] = add_preprocessing(tiny_vit_copy, precisions=["q4"])
    assert result.artifacts[0].path == "visual.q4.preprocessing.onnx" and result.artifacts[0].verdict == "pass"


def test_cli_q4_json_and_bad_tower(tiny_vit_copy: Path) -> None:
    result = CliRunner().invoke(main, ["q4", str(tiny_vit_copy), "--towers", "visual", "--block-size", "16", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[0]["precision"] == "q4" and data[0]["artifacts"][0]["details"]["block_size"] == 16
    bad = CliRunner().invoke(main, ["q4", str(tiny_vit_copy), "--towers", "audio"])
    assert bad.exit_code == 2 and "unknown tower" in bad.output
