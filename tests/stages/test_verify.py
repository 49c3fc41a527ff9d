from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clip_export import export_onnx, resolve
from clip_export.cli import main
from clip_export.core.configs import LocalSources
from clip_export.core.environment import Environment, current_environment
from clip_export.core.errors import ClipExportError
from clip_export.core.manifest import read_manifest, write_manifest
from clip_export.stages.verify import thresholds_with_overrides, verify

from ..helpers import flip_byte, rewrite_initializer, swap_tokenizer_ids


def test_good_artifacts_pass_and_are_recorded(tiny_vit_copy: Path) -> None:
    result = verify(tiny_vit_copy)
    assert result.passed, result.failures
    assert {(c.path, c.provider_ran) for c in result.checks} == {
        ("visual.onnx", "CPUExecutionProvider"),
        ("text.onnx", "CPUExecutionProvider"),
        ("tokenizer.json", "CPUExecutionProvider"),
    }
    visual = next(c for c in result.checks if c.tower == "visual")
    names = {m.name for m in visual.metrics}
    assert {
        "mean_abs_raw",
        "mean_abs_normalized",
        "max_abs_normalized",
        "min_cosine",
        "nan_count",
        "inf_count",
        "batch7_vs_single_max_abs",
    } <= names
    assert {
        "image2image_top1",
        "text2image_top1",
        "image2text_top1",
        "text2image_top5_overlap",
        "image2text_ranking_changed",
    } <= names
    assert visual.metric("mean_abs_normalized") < 1e-5
    manifest = read_manifest(tiny_vit_copy)
    assert manifest.section("verification")["passed"] is True
    assert {r["path"] for r in manifest.section("verification")["results"]} == {
        "visual.onnx",
        "text.onnx",
        "tokenizer.json",
    }
    report = (tiny_vit_copy / "VERIFY.md").read_text()
    assert "**PASS**" in report and "| tokenizer.json | CPUExecutionProvider | exact ids |" in report
    assert f"on the reference's {len(manifest.reference.captions)} raw captions: 0 give other ids" in report


def test_a_tokenizer_file_with_other_ids_fails_verify(tiny_vit_copy: Path) -> None:
    swap_tokenizer_ids(tiny_vit_copy)
    result = verify(tiny_vit_copy)
    assert not result.passed
    assert [f.split(":")[0] for f in result.failures] == ["tokenizer.json [CPUExecutionProvider]"]
    assert all(c.passed for c in result.checks if c.path != "tokenizer.json")  # the towers themselves still hold on ids
    # Any verified text artifact brings the tokenizer row (the pipeline verifies with a precision filter);
    # a run of image artifacts only does not.
    assert verify(tiny_vit_copy, only=lambda e: e.tower == "text").checks[-1].path == "tokenizer.json"
    assert all(c.path != "tokenizer.json" for c in verify(tiny_vit_copy, only=lambda e: e.tower == "visual").checks)


def test_flipped_weight_byte_fails_integrity(tiny_vit_copy: Path) -> None:
    flip_byte(tiny_vit_copy / "visual.onnx")
    result = verify(tiny_vit_copy)
    assert not result.passed
    assert any("visual.onnx does not match its sha256" in f for f in result.failures)
    assert all(c.passed for c in result.checks if c.tower == "text")


def test_missing_file_is_named(tiny_vit_copy: Path) -> None:
    (tiny_vit_copy / "text.onnx").unlink()
    result = verify(tiny_vit_copy)
    assert any("text.onnx is missing" in f for f in result.failures)


def test_truncated_external_data(tmp_path: Path) -> None:
    model_dir = export_onnx(
        resolve("tiny-vit", random_init=True), out=tmp_path, towers=["visual"], external_data=True
    ).model_dir
    data = model_dir / "visual.onnx.data"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    result = verify(model_dir)
    assert any("visual.onnx.data has" in f and "truncated" in f for f in result.failures)


def test_perturbed_weights_break_the_fp32_threshold_and_every_failure_is_listed(tiny_vit_copy: Path) -> None:
    rng = np.random.default_rng(0)
    rewrite_initializer(tiny_vit_copy, "visual.onnx", lambda w: w + rng.normal(0, 0.05, w.shape))
    result = verify(tiny_vit_copy)
    failing = [f for f in result.failures if f.startswith("visual.onnx")]
    assert any("mean_abs_normalized" in f for f in failing)
    assert any("min_cosine" in f for f in failing)
    assert len(failing) >= 3  # all failing metrics, not just the first


def test_nan_output_fails(tiny_vit_copy: Path) -> None:
    rewrite_initializer(tiny_vit_copy, "text.onnx", lambda w: np.full_like(w, np.nan))
    result = verify(tiny_vit_copy)
    assert any("nan_count" in f for f in result.failures if f.startswith("text.onnx"))


def test_cuda_refused_on_cpu_machine(tiny_vit_copy: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here; the refusal path needs a CPU-only onnxruntime")
    result = verify(tiny_vit_copy, providers=["cpu", "cuda"])
    cuda_rows = [c for c in result.checks if c.provider_requested == "CUDAExecutionProvider"]
    assert cuda_rows and all(c.status == "fail" and c.provider_ran is None for c in cuda_rows)
    assert "the requested provider was CUDAExecutionProvider; available: " in cuda_rows[0].failures[0]
    assert all(c.passed for c in result.checks if c.provider_requested == "CPUExecutionProvider")


def test_reference_recomputed_with_torch_and_custom_set(tiny_vit_copy: Path, tmp_path: Path) -> None:
    images = tmp_path / "imgs"
    images.mkdir()
    bundled = sorted((Path(__file__).resolve().parents[2] / "clip_export" / "evalset" / "images").glob("*.jpg"))[:4]
    for p in bundled:
        shutil.copy(p, images / p.name)
    texts = tmp_path / "captions.txt"
    texts.write_text("a cat\na rocket\na cup of coffee\n")
    result = verify(tiny_vit_copy, images=images, texts=texts)
    assert result.passed and result.reference == "recomputed with torch fp32"
    assert verify(tiny_vit_copy, reference="torch", write=False).passed


def test_tampered_reference_is_refused(tiny_vit_copy: Path) -> None:
    flip_byte(tiny_vit_copy / "reference.npz", 0.9)
    with pytest.raises(ClipExportError, match="stored reference cannot be trusted"):
        verify(tiny_vit_copy)


def test_threshold_overrides() -> None:
    table = thresholds_with_overrides({"fp16.mean_abs_normalized": 1.0, "min_cosine": 0.5})
    assert table["fp16"].mean_abs_normalized == 1.0 and table["fp32"].mean_abs_normalized == 1e-5
    assert table["int8"].min_cosine == 0.5
    with pytest.raises(ClipExportError, match="unknown threshold"):
        thresholds_with_overrides({"speed": 1.0})


def test_cli_exit_codes_and_json(tiny_vit_copy: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(main, ["verify", str(tiny_vit_copy), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)[0]["passed"] is True
    tight = runner.invoke(main, ["verify", str(tiny_vit_copy), "-q", "--threshold", "mean_abs_normalized=1e-12"])
    assert tight.exit_code == 1
    assert "Failures:" in tight.stdout and "visual.onnx" in tight.stdout and "text.onnx" in tight.stdout
    assert tight.stderr.startswith("Error: verification failed")
    assert runner.invoke(main, ["verify", str(tiny_vit_copy), "--threshold", "oops"]).exit_code == 2
    missing = runner.invoke(main, ["verify", str(tiny_vit_copy.parent / "nope")])
    assert missing.exit_code == 1 and "no artifact directory" in missing.stderr


@pytest.mark.gpu
def test_cuda_provider_really_runs(tiny_vit_copy: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDAExecutionProvider here (install clip-export[gpu] on a CUDA machine)")
    result = verify(tiny_vit_copy, providers=["cuda"])
    assert result.passed and {c.provider_ran for c in result.checks} == {"CUDAExecutionProvider"}


def test_a_partial_verify_keeps_the_other_records(tiny_vit_copy: Path) -> None:
    """Verifying one precision or another provider must not erase earlier passing rows."""
    assert verify(tiny_vit_copy).passed
    verify(tiny_vit_copy, providers=["cuda"], only=lambda e: e.tower == "text")
    rows = read_manifest(tiny_vit_copy).section("verification")["results"]
    by_key = {(r["path"], r["provider_requested"]): r["status"] for r in rows}
    assert by_key[("visual.onnx", "CPUExecutionProvider")] == "pass"
    assert by_key[("text.onnx", "CPUExecutionProvider")] == "pass"
    if ("text.onnx", "CUDAExecutionProvider") in by_key:
        assert by_key[("text.onnx", "CUDAExecutionProvider")] in ("pass", "fail")
    verify(tiny_vit_copy, thresholds={"mean_abs_normalized": 1e-12}, only=lambda e: e.tower == "visual")
    rows = read_manifest(tiny_vit_copy).section("verification")["results"]
    assert {(r["path"], r["provider_requested"]): r["status"] for r in rows}[
        ("visual.onnx", "CPUExecutionProvider")
    ] == "fail"


def test_a_second_environment_adds_its_verdicts(tiny_vit_copy: Path) -> None:
    """verify on another machine adds rows for that environment; the first machine's stay."""
    assert verify(tiny_vit_copy).passed
    manifest = read_manifest(tiny_vit_copy)
    for row in manifest.section("verification")["results"]:
        row["environment"] = dataclasses.replace(
            Environment.from_json(row["environment"]), cpu_target="znver3", isa_flags=("avx2", "fma")
        ).to_json()
    write_manifest(tiny_vit_copy, manifest)
    result = verify(tiny_vit_copy)
    rows = read_manifest(tiny_vit_copy).section("verification")["results"]
    here = current_environment("CPUExecutionProvider")
    assert sorted(r["environment"]["tier"] for r in rows if r["path"] == "visual.onnx") == sorted(
        ["AVX2 without VNNI", here.tier]
    )
    assert (
        len({r["environment"]["key"] for r in rows}) == 2 and len(result.history) == 6
    )  # visual, text and tokenizer rows per environment
    report = (tiny_vit_copy / "VERIFY.md").read_text()
    assert f"for these bytes on: {here.describe()}" in report
    assert report.count("| visual.onnx | `") == 2 and "(znver3, AVX2 without VNNI)" in report


def test_a_report_that_cannot_be_written_still_shows_the_verdicts(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from clip_export.stages import verify as verify_module

    def full_disk(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(verify_module, "atomic_write_text", full_disk)
    before = read_manifest(tiny_vit_copy)
    result = CliRunner().invoke(main, ["verify", str(tiny_vit_copy), "-q"])
    assert result.exit_code == 1
    assert "visual.onnx" in result.stdout and "PASS" in result.stdout
    assert (
        result.stderr.startswith("Error: could not write VERIFY.md and the manifest's verification section")
        and "the disk is full" in result.stderr
    )
    assert "the verdicts above were computed but not recorded" in result.stderr and result.stderr.count("\n") == 1
    assert read_manifest(tiny_vit_copy) == before


def _as_checkpoint_export(model_dir: Path, checkpoint: str, sha256: str) -> None:
    """Make the manifest claim the export came from a local checkpoint at `checkpoint`."""
    manifest = read_manifest(model_dir)
    manifest.section("model").update(random_init=False, seed=None, checkpoint=checkpoint, checkpoint_sha256=sha256)
    write_manifest(model_dir, manifest)


def test_torch_reference_never_reads_the_checkpoint_a_manifest_names(tiny_vit_copy: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("not a checkpoint\n")
    messages = []
    for named in (str(secret), str(tmp_path / "absent")):  # no oracle: same line whether the file exists
        _as_checkpoint_export(tiny_vit_copy, named, "0" * 64)
        with pytest.raises(ClipExportError, match="pass --weights PATH") as caught:
            verify(tiny_vit_copy, reference="torch", write=False)
        messages.append(str(caught.value))
        assert named not in str(caught.value)
    assert messages[0] == messages[1]


def test_torch_reference_takes_the_checkpoint_from_weights(tiny_vit_copy: Path, tmp_path: Path) -> None:
    import torch

    from clip_export.core.checkpoints import sha256_file
    from clip_export.core.models import load_model

    weights = tmp_path / "tiny.pt"
    torch.save(load_model(resolve("tiny-vit", random_init=True, seed=0)).model.state_dict(), weights)
    _as_checkpoint_export(tiny_vit_copy, "/dev/zero", sha256_file(weights))
    assert verify(tiny_vit_copy, reference="torch", sources=LocalSources(weights=weights), write=False).passed
    other = tmp_path / "other.pt"
    torch.save({"x": torch.zeros(1)}, other)
    with pytest.raises(ClipExportError, match="is not the checkpoint tiny-vit was exported from"):
        verify(tiny_vit_copy, reference="torch", sources=LocalSources(weights=other), write=False)
    result = CliRunner().invoke(main, ["verify", str(tiny_vit_copy), "--reference", "torch", "-q"])
    assert result.exit_code == 1 and "pass --weights PATH" in result.output


def test_external_data_the_manifest_does_not_list_is_not_verified(tiny_vit_copy: Path) -> None:
    from ..helpers import move_weights_to_unlisted_data

    move_weights_to_unlisted_data(tiny_vit_copy)
    result = verify(tiny_vit_copy, write=False)
    assert not result.passed
    assert any("'visual.onnx.extra' that the manifest does not list" in f for f in result.failures)


def test_a_pass_under_overridden_thresholds_is_named_as_such(tiny_vit_copy: Path) -> None:
    rewrite_initializer(tiny_vit_copy, "visual.onnx", lambda w: w + np.random.default_rng(0).normal(0, 0.05, w.shape))
    assert not verify(tiny_vit_copy, write=False).passed
    loosened = {"fp32.min_cosine": -1.0, "fp32.mean_abs_normalized": 1.0, "fp32.max_abs_normalized": 2.0}
    loosened |= {"fp32.top1_agreement": 0.0, "fp32.top5_overlap": 0.0}
    result = verify(tiny_vit_copy, thresholds=loosened)
    visual = next(c for c in result.checks if c.path == "visual.onnx")
    assert result.passed and visual.status.startswith("pass (thresholds overridden: fp32.")
    assert "fp32.min_cosine=-1" in visual.status
    row = next(r for r in read_manifest(tiny_vit_copy).section("verification")["results"] if r["path"] == "visual.onnx")
    assert row["status"] == visual.status
    assert "pass (thresholds overridden: " in (tiny_vit_copy / "VERIFY.md").read_text()
