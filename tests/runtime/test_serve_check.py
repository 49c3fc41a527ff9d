from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clip_export.core.environment import Environment, current_environment
from clip_export.core.errors import ClipExportError, ManifestError, ServeCheckError
from clip_export.core.manifest import file_record, read_manifest, settings_digest, write_manifest
from clip_export.core.spec import INT8_FAMILIES, REFERENCE_NAME, SERVE_CHECK_ITEMS, THRESHOLDS
from clip_export.runtime import ClipOnnx
from clip_export.runtime.serve_check import PASSED_ELSEWHERE
from clip_export.stages.quantize4 import quantize_q4
from clip_export.stages.quantize8.quantize8 import quantize_int8
from clip_export.stages.release.model_card import model_card
from clip_export.stages.verify import verify

from ..helpers import fail_gate_where, rewrite_initializer


@pytest.fixture
def verified_dir(tiny_vit_copy: Path) -> Path:
    assert verify(tiny_vit_copy).passed
    return tiny_vit_copy


def _move_verdicts_to_another_machine(model_dir: Path) -> None:
    """Rewrite every verdict as if it had been obtained on an AVX2 machine without VNNI."""
    manifest = read_manifest(model_dir)
    for row in manifest.section("verification")["results"]:
        env = dataclasses.replace(
            Environment.from_json(row["environment"]), cpu_target="znver3", isa_flags=("avx2", "fma")
        )
        row["environment"] = env.to_json()
    write_manifest(model_dir, manifest)


def test_a_verdict_for_this_environment_skips_the_check(verified_dir: Path) -> None:
    model = ClipOnnx.from_release(verified_dir)
    assert {t: c.status.split(":")[0] for t, c in model.serve_checks.items()} == {
        "visual": "skipped",
        "text": "skipped",
    }
    assert "verified in this environment" in model.serve_checks["visual"].status


def test_another_environment_is_checked_here(verified_dir: Path) -> None:
    _move_verdicts_to_another_machine(verified_dir)
    model = ClipOnnx.from_release(verified_dir)
    for tower, check in model.serve_checks.items():
        assert check.status == "pass", tower
        assert check.environment.key == current_environment("CPUExecutionProvider").key
        assert {m.name for m in check.metrics} >= {"mean_abs_normalized", "min_cosine", "nan_count"}
        assert (
            check.metrics[1].value <= THRESHOLDS["fp32"].mean_abs_normalized
        )  # fp32: the same numbers as the stored reference


def test_a_pass_in_another_process_of_the_job_stands_for_the_same_bytes_settings_and_environment_only(
    verified_dir: Path,
) -> None:
    """What an `embed --ray` actor takes from its driver instead of checking again: the driver's pass, for
    the same bytes, input settings and preprocessing in the same environment; any other, or
    check="always", runs the check."""
    _move_verdicts_to_another_machine(verified_dir)
    driver = ClipOnnx.from_release(verified_dir)
    passed = driver.passed_checks()
    manifest = read_manifest(verified_dir)
    shas, settings = {e.path: e.sha256 for e in manifest.select()}, settings_digest(manifest)
    assert set(passed) == {f"{shas[c.path]}|{settings}|fast" for c in driver.serve_checks.values()}  # both towers
    actor = ClipOnnx.from_release(verified_dir, passed_checks=passed)
    for tower, check in actor.serve_checks.items():
        assert check.status == PASSED_ELSEWHERE, tower
        assert check.passed_here == {}  # a skip is not a pass to hand on
    others = {
        "another CPU": {covers: key + "-on-another-cpu" for covers, key in passed.items()},
        "other bytes": {covers[::-1]: key for covers, key in passed.items()},
        "other settings": {covers.replace(settings, "0" * len(settings)): key for covers, key in passed.items()},
    }
    for what, handed in others.items():
        checks = ClipOnnx.from_release(verified_dir, passed_checks=handed).serve_checks.values()
        assert all(c.status == "pass" for c in checks), what
    exact = ClipOnnx.from_release(verified_dir, preprocess="exact", passed_checks=passed)
    assert exact.serve_checks["visual"].status == "pass"  # PIL preprocessing: its own check
    always = ClipOnnx.from_release(verified_dir, check="always", passed_checks=passed)
    assert all(c.status == "pass" for c in always.serve_checks.values())


def test_always_and_off(verified_dir: Path) -> None:
    assert all(c.status == "pass" for c in ClipOnnx.from_release(verified_dir, check="always").serve_checks.values())
    assert all(
        c.status.startswith("skipped: turned off")
        for c in ClipOnnx.from_release(verified_dir, check="off").serve_checks.values()
    )
    with pytest.raises(
        ClipExportError, match="the requested serve-time check was 'sometimes'; choose from auto, always, off"
    ):
        ClipOnnx.from_release(verified_dir, check="sometimes")


def test_the_guard_bites_on_numbers_that_are_wrong_here(verified_dir: Path) -> None:
    """Right hashes, wrong numbers: perturbed after verification, manifest re-hashed."""
    rewrite_initializer(verified_dir, "visual.onnx", lambda w: w * 3.0 + 0.05)
    with pytest.raises(ServeCheckError) as caught:
        ClipOnnx.from_release(verified_dir)
    message = str(caught.value)
    assert message.startswith(
        "visual.onnx misses its preproc-fp32 thresholds on 4 reference items (the reference photographs, "
        "decoded and preprocessed for serving) in this environment"
    )
    assert current_environment("CPUExecutionProvider").describe() in message
    assert "mean_abs_normalized" in message and "clip-export verify" in message
    assert "fp32 artifact" not in message  # it is the fp32 artifact: no advice to serve it instead
    report = verify(verified_dir)
    assert not report.passed and any(
        f.startswith("visual.onnx [CPUExecutionProvider]: mean_abs_normalized") for f in report.failures
    )


def test_a_truncated_or_missing_reference_is_one_clear_error(verified_dir: Path) -> None:
    _move_verdicts_to_another_machine(verified_dir)
    with np.load(verified_dir / REFERENCE_NAME) as data:
        arrays = {k: data[k][: SERVE_CHECK_ITEMS - 2] for k in data.files}
    np.savez(verified_dir / REFERENCE_NAME, **arrays)
    manifest = read_manifest(verified_dir)
    manifest.section("reference").update(file_record(verified_dir / REFERENCE_NAME, verified_dir).to_json())
    write_manifest(verified_dir, manifest)
    with pytest.raises(
        ManifestError, match="the stored reference reference.npz holds 2 'input_ids' rows; the serve-time check needs 4"
    ):
        ClipOnnx.from_release(verified_dir)
    manifest.drop_section("reference")
    write_manifest(verified_dir, manifest)
    with pytest.raises(ManifestError, match="carries no stored reference, so the serve-time check cannot run"):
        ClipOnnx.from_release(verified_dir)
    assert ClipOnnx.from_release(verified_dir, check="off").serve_checks["text"].status.startswith("skipped")


def test_a_verdict_with_a_broken_environment_is_refused(verified_dir: Path) -> None:
    manifest = read_manifest(verified_dir)
    for row in manifest.section("verification")["results"]:
        row["environment"] = {"cpu": "somewhere"}
    write_manifest(verified_dir, manifest)
    with pytest.raises(ManifestError, match="has a verdict from an unknown environment"):
        ClipOnnx.from_release(verified_dir)


AVX2_FLAGS = ("avx2", "fma")


@pytest.mark.parametrize(
    ("flags", "served"),
    [(("avx2", "fma", "avx512f", "avx512_vnni"), "int8"), (("avx2", "fma", "avx_vnni"), "int8"), (AVX2_FLAGS, "uint8")],
)
def test_a_release_with_both_int8_families_serves_the_one_for_this_cpu(
    int8_both_dir: Path, flags: tuple[str, ...], served: str
) -> None:
    model = ClipOnnx.from_release(int8_both_dir, precision="int8", cpu_flags=flags)
    assert {t: a.path.name for t, a in model.artifacts.items()} == {t: f"{t}.{served}.onnx" for t in ("visual", "text")}
    # both were verified on this CPU at conversion, so "auto" reuses that verdict for either
    assert all(c.status.startswith("skipped: verified in this environment") for c in model.serve_checks.values())


def test_the_serve_check_refuses_qint8_on_a_cpu_without_vnni(int8_both_dir: Path) -> None:
    manifest = read_manifest(int8_both_dir)
    manifest.artifacts = [a for a in manifest.artifacts if not a.path.endswith(".uint8.onnx")]
    write_manifest(int8_both_dir, manifest)
    with pytest.raises(ServeCheckError, match=r"visual.int8.onnx is INT8 of the vnni kernel family \(QInt8 weights"):
        ClipOnnx.from_release(int8_both_dir, precision="int8", cpu_flags=AVX2_FLAGS)
    # the flags call for QInt8 and the release has it: served (this CPU verified it at conversion)
    assert ClipOnnx.from_release(int8_both_dir, precision="int8", cpu_flags=("avx512_vnni",)).artifacts


@pytest.fixture
def int8_both_dir(tiny_vit_copy: Path) -> Path:
    if not INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags):
        pytest.skip("this CPU has no VNNI, so int8 does not build (or claim) the QInt8 artifact here")
    quantize_int8(tiny_vit_copy)
    assert verify(tiny_vit_copy).passed
    return tiny_vit_copy


HASWELL_PROBE = """
import json, sys
from clip_export.runtime import ClipOnnx
from clip_export.stages.verify import verify
model = ClipOnnx.from_release(sys.argv[1], precision="int8")
report = verify(sys.argv[1], only=lambda e: e.precision in ("int8", "q4"))
rows = {c.path: [c.status, c.environment.tier_label] for c in report.checks}
served = {t: a.path.name for t, a in model.artifacts.items()}
print(json.dumps({"checks": {t: [c.status, c.environment.tier, c.environment.cpu_target] for t, c in model.serve_checks.items()}, "verify": report.passed, "rows": rows, "served": served, "emulated_on": report.checks[0].environment.emulated_on}))
"""


def _qemu() -> str:
    """qemu-x86_64, or the test skips with how to install it (before any work is done)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user; .ci/run installs it)")
    return qemu


def _probe_under_haswell(model_dir: Path) -> dict:
    """HASWELL_PROBE's findings for `model_dir` under qemu's Haswell; every serve-time check there
    must have passed on that tier, and verify too (the callers assert what was served and verified)."""
    done = subprocess.run(
        [_qemu(), "-cpu", "Haswell", sys.executable, "-c", HASWELL_PROBE, str(model_dir)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for tower, (status, tier, target) in result["checks"].items():
        assert (status, tier, target) == ("pass", "AVX2 without VNNI", "haswell (emulated)"), tower
    assert result["verify"] is True
    # every verdict there names the emulation and the host, whatever flags the host has
    assert result["emulated_on"].endswith(", by qemu-x86_64"), result["emulated_on"]
    return result


@pytest.mark.emulated
def test_int8_holds_under_avx2_without_vnni(tiny_vit_copy: Path) -> None:
    """onnxruntime under qemu's Haswell picks its AVX2 kernels (no VNNI): from_release(precision=
    "int8") must pick the QUInt8 artifact there and pass its serve-time check, and verify too,
    whichever CPU runs the suite, with the QInt8 one (built where the suite's CPU has VNNI) marked
    not applicable for that tier; so must q4, whose MatMulNBits computes in int8 (accuracy_level 4)
    with kernels chosen by the same CPU flags."""
    _qemu()
    quantize_int8(tiny_vit_copy)
    quantize_q4(tiny_vit_copy)
    assert verify(tiny_vit_copy).passed
    result = _probe_under_haswell(tiny_vit_copy)
    assert result["served"] == {"visual": "visual.uint8.onnx", "text": "text.uint8.onnx"}
    expected = {f"{tower}.{precision}.onnx" for tower in ("visual", "text") for precision in ("uint8", "q4")} | {
        "tokenizer.json"
    }
    rows = {path: row for path, row in result["rows"].items() if ".int8." not in path}
    assert rows == {path: ["pass", "AVX2 without VNNI (emulated)"] for path in expected}
    vnni_here = INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags)
    qint8 = {path: row for path, row in result["rows"].items() if ".int8." in path}
    assert qint8 == (
        {f"{t}.int8.onnx": ["not applicable", "AVX2 without VNNI (emulated)"] for t in ("visual", "text")}
        if vnni_here
        else {}
    )
    keys = {
        r["environment"]["key"]
        for r in read_manifest(tiny_vit_copy).section("verification")["results"]
        if r["path"] == "visual.uint8.onnx"
    }
    assert len(keys) == 2  # the native verdict and the Haswell one, side by side
    native = current_environment("CPUExecutionProvider")
    card = model_card(read_manifest(tiny_vit_copy), "tiny", "v1")
    int8_table = card.split("| asset | tower | weights | for CPUs | verified (passed) on |")[1]
    row = next(line for line in int8_table.splitlines() if line.startswith("| visual.uint8.onnx |"))
    assert set(row.strip("| ").split(" | ")[-1].split("; ")) == {"AVX2 without VNNI (emulated)", native.tier}


@pytest.mark.emulated
def test_blockwise_int8_holds_under_avx2_without_vnni(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The blockwise fallback (MatMulNBits 8-bit, int8 activations per block) is the every-x86 file
    when a tower's plain scheme fails: under qemu's Haswell it must be served for that tower, pass
    its serve-time check and verify, like the plain QUInt8 file beside it."""
    _qemu()
    restore_gate = fail_gate_where(
        monkeypatch, lambda entry: entry.tower == "text" and entry.detail("conversion")["mode"] != "blockwise"
    )
    quantize_int8(tiny_vit_copy, scheme=INT8_FAMILIES["any-x86"].scheme)
    restore_gate()
    assert read_manifest(tiny_vit_copy).find(path="text.uint8.onnx").detail("conversion")["mode"] == "blockwise"
    result = _probe_under_haswell(tiny_vit_copy)
    assert result["served"] == {"visual": "visual.uint8.onnx", "text": "text.uint8.onnx"}
    assert result["rows"]["text.uint8.onnx"] == ["pass", "AVX2 without VNNI (emulated)"]


def _edit_manifest(model_dir: Path, section: str, key: str, value: object) -> None:
    manifest = read_manifest(model_dir)
    manifest.section(section)[key] = value
    write_manifest(model_dir, manifest)


def test_the_check_runs_the_serving_path_from_raw_photos_and_captions(verified_dir: Path) -> None:
    model = ClipOnnx.from_release(verified_dir, check="always")
    assert model.serve_checks["visual"].inputs == "the reference photographs, decoded and preprocessed for serving"
    assert model.serve_checks["text"].inputs == "the reference captions, tokenized by the serving tokenizer"
    exact = ClipOnnx.from_release(verified_dir, check="always", preprocess="exact")
    assert all(c.status == "pass" for c in exact.serve_checks.values())


def test_a_changed_preprocessing_setting_fails_at_load(verified_dir: Path) -> None:
    """Stored pixel tensors never see the manifest's preprocessing: the check used to pass this."""
    _edit_manifest(verified_dir, "preprocess", "mean", [0.9, 0.1, 0.9])
    with pytest.raises(ServeCheckError, match="visual.onnx misses its preproc-fp32 thresholds"):
        ClipOnnx.from_release(verified_dir, check="always")


def test_a_changed_tokenizer_setting_fails_at_load(verified_dir: Path) -> None:
    manifest = read_manifest(verified_dir)
    _edit_manifest(verified_dir, "tokenizer", "context_length", manifest.section("tokenizer")["context_length"] // 2)
    with pytest.raises(ServeCheckError, match="serving tokenizer turns 4 of 4 reference captions into other ids"):
        ClipOnnx.from_release(verified_dir, check="always")


def test_from_release_refuses_external_data_the_manifest_does_not_list(tiny_vit_copy: Path) -> None:
    from clip_export.core.errors import IntegrityError

    from ..helpers import move_weights_to_unlisted_data

    move_weights_to_unlisted_data(tiny_vit_copy)
    verify(tiny_vit_copy)  # before #19 this passed and recorded a verdict for the graph alone
    with pytest.raises(IntegrityError, match="'visual.onnx.extra' that the manifest does not list"):
        ClipOnnx.from_release(tiny_vit_copy)


def test_from_release_checks_a_pass_under_overridden_thresholds(tiny_vit_copy: Path) -> None:
    assert verify(tiny_vit_copy, thresholds={"fp32.min_cosine": -1.0}).passed
    checks = ClipOnnx.from_release(tiny_vit_copy).serve_checks.values()
    assert checks and all(c.status == "pass" for c in checks)  # run here, never skipped on that verdict


def test_auto_never_skips_on_a_verdict_for_other_settings(verified_dir: Path) -> None:
    """The verdict here was for these bytes in this environment but with the old mean: before the
    settings digest, "auto" skipped its check and served wrong embeddings."""
    _edit_manifest(verified_dir, "preprocess", "mean", [0.9, 0.1, 0.9])
    with pytest.raises(ServeCheckError, match="visual.onnx misses its preproc-fp32 thresholds"):
        ClipOnnx.from_release(verified_dir)


def test_towers_opens_and_checks_only_those(verified_dir: Path) -> None:
    model = ClipOnnx.from_release(verified_dir, check="always", towers="text")  # one name alone is one tower
    assert set(model.artifacts) == set(model.serve_checks) == {"text"}
    assert model.serve_checks["text"].status == "pass"
    np.testing.assert_allclose(
        model.embed_texts(["a cat"]), ClipOnnx.from_release(verified_dir).embed_texts(["a cat"]), atol=1e-6
    )


def test_a_tower_the_release_lacks_is_named_as_missing_not_as_unopened(verified_dir: Path) -> None:
    manifest = json.loads((verified_dir / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a.get("tower") != "visual"]
    (verified_dir / "manifest.json").write_text(json.dumps(manifest))
    model = ClipOnnx.from_release(verified_dir, check="off")
    with pytest.raises(ClipExportError, match="has no fp32 visual tower"):
        model.embed_images(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        ClipExportError, match="has no fp32 ONNX artifact for visual; available: visual: none; text: fp32/onnx"
    ):
        ClipOnnx.from_release(verified_dir, towers=["visual"])
