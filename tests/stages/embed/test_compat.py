"""compat: fp32 and INT8 of one export share an index; a perturbed release or another model does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_export.core.errors import ClipExportError
from clip_export.core.manifest import read_manifest, write_manifest
from clip_export.core.spec import COMPAT_THRESHOLDS
from clip_export.stages.embed.compat import INTERCHANGEABLE, REINDEX, compat, parse_side

from ...helpers import perturbed_release


def test_int8_is_interchangeable_with_fp32_on_this_machine(tiny_vit_int8_dir: Path) -> None:
    result = compat(f"{tiny_vit_int8_dir}:fp32", f"{tiny_vit_int8_dir}:int8")
    names = {m.name for m in result.metrics}
    assert {
        "text_new_to_image_old_top1",
        "text_old_to_image_new_top5",
        "image_new_to_image_old_top1",
        "image_mean_abs_normalized",
        "text_mean_abs_normalized",
    } <= names
    assert result.verdict == INTERCHANGEABLE, result.summary()
    assert "AVX" in result.environment or "CPU" in result.environment
    limits = {m.name: m.limit for m in result.metrics}
    assert limits["image_mean_abs_normalized"] == COMPAT_THRESHOLDS.mean_abs_normalized


def test_a_perturbed_release_needs_a_reindex_and_says_which_metrics_fail(
    tiny_vit_dir: Path, tiny_vit_copy: Path
) -> None:
    perturbed_release(tiny_vit_copy)
    result = compat(str(tiny_vit_dir), str(tiny_vit_copy))
    assert result.verdict == REINDEX
    failing = {m.name for m in result.metrics if not m.passed}
    assert "image_mean_abs_normalized" in failing
    assert "text_mean_abs_normalized" not in failing  # the text tower was left alone
    assert "re-index needed" in result.summary() and "image_mean_abs_normalized" in result.summary()


def test_another_model_is_refused_in_one_line(tiny_vit_dir: Path, tiny_vit_copy: Path) -> None:
    manifest = read_manifest(tiny_vit_copy)
    manifest.section("model")["arch"] = "ViT-L-14"
    write_manifest(tiny_vit_copy, manifest)
    with pytest.raises(ClipExportError, match="is tiny-vit and .* is ViT-L-14: different models never share an index"):
        compat(str(tiny_vit_dir), str(tiny_vit_copy))


def test_sides_are_dir_or_dir_colon_precision(tmp_path: Path) -> None:
    assert parse_side(str(tmp_path)) == (tmp_path, "fp32")
    assert parse_side(f"{tmp_path}:int8") == (tmp_path, "int8")


def test_the_cli_prints_the_verdict_with_its_environment_and_json(tiny_vit_int8_dir: Path) -> None:
    from click.testing import CliRunner

    from clip_export.cli import main

    done = CliRunner().invoke(main, ["compat", f"{tiny_vit_int8_dir}:fp32", f"{tiny_vit_int8_dir}:int8"])
    assert done.exit_code == 0, done.output
    assert "verdict: INTERCHANGEABLE; it holds for these bytes on" in done.output
    as_json = CliRunner().invoke(main, ["compat", f"{tiny_vit_int8_dir}:fp32", f"{tiny_vit_int8_dir}:q4", "--json"])
    assert (
        as_json.exit_code == 1
        and as_json.output.startswith("Error: ")
        and "has no q4 ONNX artifact for visual, text; available: visual: fp32/onnx" in as_json.output
    )
    parsed = json.loads(
        CliRunner().invoke(main, ["compat", str(tiny_vit_int8_dir), f"{tiny_vit_int8_dir}:int8", "--json"]).output
    )
    assert parsed["verdict"] == INTERCHANGEABLE and len(parsed["metrics"]) == 8
