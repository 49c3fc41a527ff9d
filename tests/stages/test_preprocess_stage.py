"""Preprocessing-graph artifacts: gated from raw files, recorded like the others, shown by verify."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from clip_export.cli import main
from clip_export.core.errors import ClipExportError, ConversionError
from clip_export.core.manifest import read_manifest, write_manifest
from clip_export.core.preprocess_graph import rgb_uint8
from clip_export.core.spec import PREPROCESSING_FORMAT, RAW_IMAGE_INPUT, THRESHOLDS
from clip_export.stages.preprocess_stage import add_preprocessing
from clip_export.stages.quantize8.quantize8 import quantize_int8
from clip_export.stages.verify import verify


def test_fp32_and_int8_graphs_pass_and_are_recorded(tiny_vit_copy: Path) -> None:
    quantize_int8(tiny_vit_copy, towers=("visual",))
    results = add_preprocessing(tiny_vit_copy)
    made = {a.path: a for r in results for a in r.artifacts}
    assert set(made) >= {"visual.preprocessing.onnx", "visual.uint8.preprocessing.onnx"}
    assert set(made) <= {
        "visual.preprocessing.onnx",
        "visual.uint8.preprocessing.onnx",
        "visual.int8.preprocessing.onnx",
    }
    assert all(a.verdict == "pass" for a in made.values())
    assert made["visual.preprocessing.onnx"].mean_abs_normalized <= THRESHOLDS["preproc-fp32"].mean_abs_normalized
    entry = read_manifest(tiny_vit_copy).find(path="visual.uint8.preprocessing.onnx")
    assert entry.format == PREPROCESSING_FORMAT and entry.precision == "int8"
    assert [t.to_json() for t in entry.inputs] == [
        {"name": RAW_IMAGE_INPUT, "dtype": "uint8", "shape": ["height", "width", 3]}
    ]
    assert entry.derived_from["path"] == "visual.uint8.onnx"
    assert entry.detail("conversion")["kernel_family"] == "any-x86"  # the source's family travels with the graph
    result = verify(tiny_vit_copy)
    rows = {c.path: c for c in result.checks}
    assert result.passed and rows["visual.preprocessing.onnx"].threshold_set == "preproc-fp32"
    assert rows["visual.uint8.preprocessing.onnx"].threshold_set == "preproc-int8"
    assert "| visual.preprocessing.onnx |" in (tiny_vit_copy / "VERIFY.md").read_text()


def test_graph_embeds_a_raw_photo_like_the_tower(tiny_vit_copy: Path) -> None:
    add_preprocessing(tiny_vit_copy, precisions=["fp32"])
    reference = np.load(tiny_vit_copy / "reference.npz")
    session = ort.InferenceSession(str(tiny_vit_copy / "visual.preprocessing.onnx"), providers=["CPUExecutionProvider"])
    from clip_export.core.evalset import load_evalset

    path = load_evalset().image_paths[1]
    got = session.run(None, {RAW_IMAGE_INPUT: rgb_uint8(path)})[0]
    expected = reference["image_embeds"][1:2]
    cosine = float((got @ expected.T)[0, 0] / np.linalg.norm(got) / np.linalg.norm(expected))
    assert got.shape == (1, expected.shape[1]) and cosine >= THRESHOLDS["preproc-fp32"].min_cosine


def test_a_wrong_normalisation_fails_the_gate_and_leaves_nothing(tiny_vit_copy: Path) -> None:
    manifest = read_manifest(tiny_vit_copy)
    manifest.section("preprocess")["mean"] = [0.0, 0.0, 0.0]
    write_manifest(tiny_vit_copy, manifest)
    with pytest.raises(ConversionError, match="visual.preprocessing.onnx failed verification"):
        add_preprocessing(tiny_vit_copy, precisions=["fp32"])
    assert not (tiny_vit_copy / "visual.preprocessing.onnx").exists()
    assert read_manifest(tiny_vit_copy).find(format=PREPROCESSING_FORMAT) is None


def test_unsupported_mode_and_missing_precision_are_refused(tiny_vit_copy: Path) -> None:
    with pytest.raises(ClipExportError, match="no visual ONNX artifact in fp16"):
        add_preprocessing(tiny_vit_copy, precisions=["fp16"])
    manifest = read_manifest(tiny_vit_copy)
    manifest.section("preprocess")["resize_mode"] = "longest"
    write_manifest(tiny_vit_copy, manifest)
    result = CliRunner().invoke(main, ["preprocessing-graph", str(tiny_vit_copy)])
    assert result.exit_code == 1 and result.output.startswith("Error: resize_mode 'longest' has no preprocessing graph")


def test_cli_json_and_verify_needs_the_raw_images(tiny_vit_copy: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["preprocessing-graph", str(tiny_vit_copy), "--precisions", "fp32", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (
        data[0]["artifacts"][0]["path"] == "visual.preprocessing.onnx" and data[0]["artifacts"][0]["verdict"] == "pass"
    )
    again = CliRunner().invoke(main, ["preprocessing-graph", str(tiny_vit_copy), "--precisions", "fp32", "-q"])
    assert again.exit_code == 1 and "--force" in again.output
    manifest = read_manifest(tiny_vit_copy)
    manifest.section("reference")["evalset"] = "images=elsewhere, texts=bundled"
    write_manifest(tiny_vit_copy, manifest)
    checked = verify(tiny_vit_copy, write=False, only=lambda e: e.format == PREPROCESSING_FORMAT)
    assert not checked.passed and "verify with --images DIR" in checked.failures[0]
