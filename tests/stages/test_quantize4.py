"""4-bit MatMulNBits artifacts: smaller, gated by their own thresholds, composable with preprocessing;
the token embedding in 8-bit (default) or 4-bit GatherBlockQuantized blocks."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from clip_export.cli import main
from clip_export.core.errors import ConversionError
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import DEFAULT_OPSET, Q4_EMBEDDING_OPSET, Q4_SCHEME, THRESHOLDS, Q4Scheme
from clip_export.stages.preprocess_stage import add_preprocessing
from clip_export.stages.quantize4 import _gather_8bit, embedding_gathers, quantize_file, quantize_q4
from clip_export.stages.verify import verify


def test_q4_passes_its_gate_and_is_smaller(tiny_vit_copy: Path) -> None:
    result = quantize_q4(tiny_vit_copy)
    limits = THRESHOLDS["q4"]
    manifest = read_manifest(tiny_vit_copy)
    for artifact in result.artifacts:
        assert artifact.verdict == "pass" and artifact.mean_abs_normalized <= limits.mean_abs_normalized
        source = manifest.find(path=artifact.source)
        assert artifact.bytes < source.bytes
        nodes = [n.op_type for n in onnx.load(str(tiny_vit_copy / artifact.path)).graph.node]
        assert nodes.count("MatMulNBits") == artifact.details["matmul_nbits_nodes"] > 0
    visual = manifest.find(path="visual.q4.onnx")
    assert visual.precision == "q4" and visual.bytes < 0.6 * manifest.find(path="visual.onnx").bytes
    checks = {c.path: c for c in verify(tiny_vit_copy, write=False).checks}
    assert checks["text.q4.onnx"].passed and checks["text.q4.onnx"].threshold_set == "q4"


def test_q4_text_embedding_is_8bit_blocks_and_the_file_a_third_of_fp32(tiny_vit_copy: Path) -> None:
    """The token embedding (49408 × 64 on the tiny model, 97% of its text file) is a Gather that
    MatMulNBits does not cover: it becomes one GatherBlockQuantized over uint8 codes, one byte per
    weight and a float scale per block, so the file falls below the issue's third of fp32."""
    fp32 = onnx.load(str(tiny_vit_copy / "text.onnx"))
    [table] = [
        t
        for t in fp32.graph.initializer
        if t.name == next(n for n in fp32.graph.node if n.name in embedding_gathers(fp32)).input[0]
    ]
    rows, width = table.dims
    [result] = quantize_q4(tiny_vit_copy, towers=("text",)).artifacts
    model = onnx.load(str(tiny_vit_copy / result.path))
    [lookup] = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert not [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == table.name]
    attrs = {a.name: helper.get_attribute_value(a) for a in lookup.attribute}
    assert attrs == {"gather_axis": 0, "quantize_axis": 1, "block_size": Q4_SCHEME.block_size, "bits": 8}
    inits = {t.name: t for t in model.graph.initializer}
    assert inits[lookup.input[0]].data_type == TensorProto.UINT8 and list(inits[lookup.input[0]].dims) == [rows, width]
    assert list(inits[lookup.input[2]].dims) == [rows, -(-width // Q4_SCHEME.block_size)]
    assert result.details["embedding_bits"] == 8 and result.details["gather_block_quantized_nodes"] == 1
    entry = read_manifest(tiny_vit_copy).find(path=result.path)
    assert entry.opset == result.details["opset"] == DEFAULT_OPSET  # uint8 codes need no new opset
    fp32_bytes = read_manifest(tiny_vit_copy).find(path="text.onnx").bytes
    embedding_bytes = rows * width * (1 + 4 / Q4_SCHEME.block_size)  # a byte per weight, a float32 scale per block
    assert result.bytes <= fp32_bytes - rows * width * 4 + embedding_bytes  # the rest shrank too (MatMulNBits)
    assert result.bytes < fp32_bytes / 3  # measured 0.29
    assert result.verdict == "pass"


def test_8bit_lookup_is_within_half_a_step_of_the_table_on_a_ragged_width() -> None:
    """40 columns in blocks of 16: two full blocks and a ragged one of 8, each row its own scales."""
    table = np.random.default_rng(0).normal(0, 0.02, (10, 40)).astype(np.float32)
    table[3, 16:32] = 0.0  # an all-zero block keeps scale 0 and decodes to zeros
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["out"], name="lookup")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 40])],
        [numpy_helper.from_array(table, "table")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", DEFAULT_OPSET), helper.make_opsetid("com.microsoft", 1)]
    )
    _gather_8bit(model, ["lookup"], 16)
    ids = np.arange(10, dtype=np.int64)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    scales = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "table_scales"))
    assert scales.shape == (10, 3) and scales[3, 1] == 0.0
    step = np.repeat(scales, 16, axis=1)[:, :40]
    assert np.all(np.abs(got - table) <= step / 2 + 1e-9) and np.all(got[3, 16:32] == 0.0)


def test_4bit_embedding_is_int4_at_opset_21(tiny_vit_dir: Path, tmp_path: Path) -> None:
    """onnxruntime's quantizer writes the 4-bit table as an INT4 initializer, which raises the opset;
    the graph loads and runs. (On the tiny model it misses the q4 gate's top-5 overlap: docs/convert.md.)"""
    target = tmp_path / "text.q4.onnx"
    details = quantize_file(tiny_vit_dir / "text.onnx", target, dataclasses.replace(Q4_SCHEME, embedding_bits=4))
    model = onnx.load(str(target))
    onnx.checker.check_model(model, full_check=True)
    [lookup] = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    assert next(t for t in model.graph.initializer if t.name == lookup.input[0]).data_type == TensorProto.INT4
    assert details["opset"] == Q4_EMBEDDING_OPSET and details["embedding_bits"] == 4
    ids = np.load(tiny_vit_dir / "reference.npz")["input_ids"][:2]
    assert np.isfinite(
        ort.InferenceSession(str(target), providers=["CPUExecutionProvider"]).run(None, {"input_ids": ids})[0]
    ).all()


def test_float_embedding_keeps_the_gather_and_the_opset(tiny_vit_dir: Path, tmp_path: Path) -> None:
    details = quantize_file(
        tiny_vit_dir / "text.onnx", tmp_path / "t.onnx", dataclasses.replace(Q4_SCHEME, embedding_bits=None)
    )
    ops = [n.op_type for n in onnx.load(str(tmp_path / "t.onnx")).graph.node]
    assert "GatherBlockQuantized" not in ops and "Gather" in ops
    assert (
        details["opset"] == DEFAULT_OPSET
        and details["embedding_bits"] is None
        and details["gather_block_quantized_nodes"] == 0
    )
    with pytest.raises(ConversionError, match="embedding bits 2"):
        quantize_file(tiny_vit_dir / "text.onnx", tmp_path / "u.onnx", Q4Scheme(32, True, 4, embedding_bits=2))


def test_visual_has_no_embedding_and_keeps_its_opset(tiny_vit_dir: Path, tmp_path: Path) -> None:
    details = quantize_file(
        tiny_vit_dir / "visual.onnx", tmp_path / "v.onnx", dataclasses.replace(Q4_SCHEME, embedding_bits=4)
    )
    assert (
        details["gather_block_quantized_nodes"] == 0
        and details["embedding_bits"] is None
        and details["opset"] == DEFAULT_OPSET
    )


def test_q4_composes_with_the_preprocessing_graph(tiny_vit_copy: Path) -> None:
    quantize_q4(tiny_vit_copy, towers=("visual",))
    [result] = add_preprocessing(tiny_vit_copy, precisions=["q4"])
    assert result.artifacts[0].path == "visual.q4.preprocessing.onnx" and result.artifacts[0].verdict == "pass"


def test_cli_q4_json_and_bad_tower(tiny_vit_copy: Path) -> None:
    result = CliRunner().invoke(main, ["q4", str(tiny_vit_copy), "--towers", "visual", "--block-size", "16", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data[0]["precision"] == "q4" and data[0]["artifacts"][0]["details"]["block_size"] == 16
    text = CliRunner().invoke(main, ["q4", str(tiny_vit_copy), "--towers", "text", "--embedding", "float", "--json"])
    assert text.exit_code == 0, text.output
    details = json.loads(text.stdout)[0]["artifacts"][0]["details"]
    assert (
        details["embedding_bits"] is None
        and details["gather_block_quantized_nodes"] == 0
        and details["opset"] == DEFAULT_OPSET
    )
    bad = CliRunner().invoke(main, ["q4", str(tiny_vit_copy), "--towers", "audio"])
    assert bad.exit_code == 2 and "unknown tower" in bad.output


def test_a_table_another_node_reads_stays_float() -> None:
    """Tied weights: a table both looked up and read by another node (a MatMul with it transposed, or a
    second Gather) is no embedding to replace; it stays float and the graph stays whole."""
    table = numpy_helper.from_array(np.zeros((10, 8), np.float32), "table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["a"], name="first"),
        helper.make_node("Gather", ["table", "ids"], ["b"], name="second"),
        helper.make_node("Gather", ["own", "ids"], ["c"], name="untied"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [None])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 8]) for n in "abc"],
        [table, numpy_helper.from_array(np.zeros((10, 8), np.float32), "own")],
    )
    assert embedding_gathers(helper.make_model(graph)) == ["untied"]
