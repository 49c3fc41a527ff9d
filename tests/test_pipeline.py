from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_export.cli import main
from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import ArtifactCheck
from clip_export.core.environment import current_environment
from clip_export.core.spec import EXPORT_PARITY_TOLERANCE


def _failing_gate(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
    return ArtifactCheck(
        entry.path,
        entry.tower,
        entry.precision,
        "onnx",
        "cpu",
        "CPUExecutionProvider",
        "fail",
        failures=("text2image_top1 = 0.9 (limit >= 0.98)",),
    )


def test_a_failed_pipeline_shows_what_each_gate_measured_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.core import conversion

    with monkeypatch.context() as patch:
        patch.setattr(conversion, "gate", _failing_gate)
        failed = CliRunner().invoke(
            main,
            [
                "pipeline",
                "tiny-vit",
                "--random-init",
                "--precisions",
                "fp32,int8",
                "--out",
                str(tmp_path),
                "--json",
                "-q",
            ],
        )
    assert failed.exit_code == 1 and failed.stderr.startswith("Error: the int8 gate failed")
    data = json.loads(failed.stdout)
    rows = {r["artifact"]: r for r in data["summary"]}
    assert (
        rows["visual.onnx"]["verdict"] == "pass (export gate)"
        and rows["visual.onnx"]["mean_abs_normalized"] <= EXPORT_PARITY_TOLERANCE
    )
    assert not any(r["verdict"] == "not verified" for r in rows.values())
    assert data["environments"] == [current_environment("CPUExecutionProvider").describe()]
    exported = (tmp_path / "tiny-vit" / "visual.onnx").stat().st_mtime_ns

    resumed = CliRunner().invoke(
        main, ["pipeline", "tiny-vit", "--random-init", "--precisions", "fp32,int8", "--out", str(tmp_path), "-q"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert "stages passed: export, int8, verify, bench (kept from an earlier run: export)" in resumed.stdout
    assert (
        "verdicts hold for these bytes on: " + current_environment("CPUExecutionProvider").describe() in resumed.stdout
    )
    assert (tmp_path / "tiny-vit" / "visual.onnx").stat().st_mtime_ns == exported  # not exported again
    assert "PASS" in resumed.stdout and "visual.int8.onnx" in resumed.stdout

    again = CliRunner().invoke(
        main,
        ["pipeline", "tiny-vit", "--random-init", "--precisions", "fp32,int8", "--out", str(tmp_path), "--json", "-q"],
    )
    assert again.exit_code == 0 and json.loads(again.stdout)["resumed"] == ["export", "int8"]


def test_another_model_in_the_way_is_not_resumed(tmp_path: Path) -> None:
    first = CliRunner().invoke(main, ["onnx", "tiny-vit", "--random-init", "--seed", "1", "--out", str(tmp_path), "-q"])
    assert first.exit_code == 0
    result = CliRunner().invoke(
        main, ["pipeline", "tiny-vit", "--random-init", "--precisions", "fp32", "--out", str(tmp_path), "-q"]
    )
    assert result.exit_code == 1 and "already exists" in result.stderr and "--force" in result.stderr


def test_gate_verdicts_show_for_a_relative_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out as a user types it (relative) must find each tower's export gate all the same."""
    from clip_export.core import conversion

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(conversion, "gate", _failing_gate)
    failed = CliRunner().invoke(
        main,
        ["pipeline", "tiny-vit", "--random-init", "--precisions", "fp32,int8", "--out", "artifacts", "--json", "-q"],
    )
    assert failed.exit_code == 1
    rows = {r["artifact"]: r["verdict"] for r in json.loads(failed.stdout)["summary"]}
    assert rows == {"visual.onnx": "pass (export gate)", "text.onnx": "pass (export gate)"}


def test_every_converted_precision_has_its_stage_and_runs_in_the_registry_order() -> None:
    from clip_export.core.spec import PIPELINE_PRECISIONS, PRECISION_SPECS
    from clip_export.pipeline import converters

    assert list(converters()) == [p.name for p in PRECISION_SPECS.values() if p.converted]
    assert PIPELINE_PRECISIONS == ("fp32", "fp16", "int8")


def test_a_registry_row_naming_no_converter_says_which_precision() -> None:
    import dataclasses

    from clip_export.core.errors import ClipExportError
    from clip_export.core.spec import PRECISION_SPECS
    from clip_export.pipeline import converter

    row = dataclasses.replace(PRECISION_SPECS["q4"], name="q3", converter="clip_export.stages.quantize4:quantize_q3")
    with pytest.raises(ClipExportError, match=r"precision q3's converter 'clip_export.stages.quantize4:quantize_q3'"):
        converter(row)
