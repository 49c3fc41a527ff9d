from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clip_export import export_onnx, load_model, resolve
from clip_export.cli import main
from clip_export.core.artifact import ArtifactEntry, Manifest
from clip_export.core.environment import Environment, current_environment
from clip_export.core.errors import ClipExportError, IntegrityError, ReleaseError
from clip_export.core.manifest import read_manifest, settings_digest, write_manifest
from clip_export.core.preprocess import preprocess_reference
from clip_export.core.reference import torch_embed
from clip_export.core.spec import INT8_FAMILIES, THRESHOLDS
from clip_export.runtime import ClipOnnx
from clip_export.stages.release.release import merge_manifests, release, safe_asset_name
from clip_export.stages.verify import verify

from ...helpers import flip_byte, swap_tokenizer_ids


@pytest.fixture
def verified_dir(tiny_vit_copy: Path) -> Path:
    assert verify(tiny_vit_copy).passed
    return tiny_vit_copy


def test_release_writes_checked_assets(verified_dir: Path, tmp_path: Path) -> None:
    result = release([verified_dir], tag="v1.0.0", out=tmp_path / "dist")
    names = set(result.assets)
    assert {
        "tiny-vit-visual-fp32.onnx",
        "tiny-vit-text-fp32.onnx",
        "tiny-vit-reference.npz",
        "manifest.json",
        "MODEL_CARD.md",
        "SHA256SUMS",
    } <= names
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=result.directory, capture_output=True, text=True)
    assert check.returncode == 0 and check.stdout.count(": OK") == len(names) - 1
    manifest = read_manifest(result.directory)
    assert {a.path for a in manifest.artifacts} == {"tiny-vit-visual-fp32.onnx", "tiny-vit-text-fp32.onnx"}
    assert manifest.section("release")["tag"] == "v1.0.0"
    card = (result.directory / "MODEL_CARD.md").read_text()
    assert "none: random weights" in card and "import numpy as np, onnxruntime as ort" in card
    tokenizer_rows = [r for r in manifest.section("verification")["results"] if r["format"] == "tokenizer"]
    assert [(r["path"], r["status"]) for r in tokenizer_rows] == [
        ("tiny-vit-tokenizer.json", "pass")
    ]  # verify's row follows its renamed file
    assert tokenizer_rows[0]["sha256"] == manifest.section("tokenizer")["file"]["sha256"]
    assert "| tiny-vit-tokenizer.json | ids on 48 raw captions | 0 differ | - | pass |" in card


def test_release_refuses_a_tokenizer_that_failed_verify(tiny_vit_copy: Path, tmp_path: Path) -> None:
    swap_tokenizer_ids(tiny_vit_copy)
    assert not verify(tiny_vit_copy).passed
    with pytest.raises(
        ReleaseError, match="tokenizer.json failed its check in 'clip-export verify': captions_with_other_ids"
    ):
        release([tiny_vit_copy], tag="v1", out=tmp_path)
    assert not (tmp_path / "tiny-vit-v1").exists()


def test_release_refuses_unverified_and_tampered(tiny_vit_copy: Path, tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match="has not passed 'clip-export verify'"):
        release([tiny_vit_copy], tag="v1", out=tmp_path)
    assert verify(tiny_vit_copy).passed
    flip_byte(tiny_vit_copy / "text.onnx")
    with pytest.raises(ReleaseError, match="text.onnx does not match its sha256"):
        release([tiny_vit_copy], tag="v1", out=tmp_path)
    assert not (tmp_path / "tiny-vit-v1").exists()


def test_unsafe_names_are_refused() -> None:
    for bad in ("../evil.onnx", "a/b.onnx", ".hidden", "x..y"):
        with pytest.raises(ReleaseError):
            safe_asset_name(bad)
    with pytest.raises(ReleaseError, match="invalid tag"):
        release([Path("unused")], tag="../v1")


def test_merging_engines_from_two_machines(verified_dir: Path, tmp_path: Path) -> None:
    second = tmp_path / "machine-b" / verified_dir.name
    shutil.copytree(verified_dir, second)
    for model_dir, cc, payload in ((verified_dir, "9.0", b"ENGINE-H100"), (second, "8.6", b"ENGINE-A10")):
        (model_dir / "visual.trt-fp16.plan").write_bytes(payload)
        manifest = read_manifest(model_dir)
        from clip_export.core.manifest import file_record

        name = "visual.trt-fp16.sm86.plan" if cc == "8.6" else "visual.trt-fp16.plan"
        (model_dir / "visual.trt-fp16.plan").rename(model_dir / name)
        record = file_record(model_dir / name, model_dir)
        entry = ArtifactEntry(
            record.path,
            record.sha256,
            record.bytes,
            tower="visual",
            precision="fp16",
            format="tensorrt",
            inputs=manifest.artifacts[0].inputs,
            outputs=manifest.artifacts[0].outputs,
            details={"tensorrt": {"version": "10.13.0", "gpu": f"stand-in {cc}", "compute_capability": cc}},
        )
        manifest.upsert(entry)
        where = Environment(
            "stand-in host",
            "znver4",
            ("avx2", "fma"),
            "Linux 6",
            "x86_64",
            "1.32.0",
            "tensorrt-runtime",
            f"stand-in {cc}",
            cc,
            "580.1",
            "13.0",
            "10.13.0",
        )
        manifest.section("verification")["results"].append(
            {
                "path": entry.path,
                "sha256": entry.sha256,
                "status": "pass",
                "provider_ran": "tensorrt-runtime",
                "metrics": {},
                "environment": where.to_json(),
                "settings_sha256": settings_digest(manifest),
            }
        )
        write_manifest(model_dir, manifest)
    merged, owners = merge_manifests([verified_dir, second])
    engines = [a for a in merged.artifacts if a.format == "tensorrt"]
    assert {e.detail("tensorrt")["compute_capability"] for e in engines} == {"9.0", "8.6"}
    result = release([verified_dir, second], tag="v2", out=tmp_path / "dist")
    assert {"tiny-vit-visual-trt-fp16-sm90.plan", "tiny-vit-visual-trt-fp16-sm86.plan"} <= set(result.assets)
    card = (result.directory / "MODEL_CARD.md").read_text()
    assert (
        "`tiny-vit-visual-trt-fp16-sm86.plan`: stand-in host (znver4, AVX2 without VNNI)" in card
        and "stand-in 8.6 (sm 8.6, driver 580.1, CUDA 13.0, TensorRT 10.13.0)" in card
    )


def test_release_refuses_a_verdict_that_names_no_environment(verified_dir: Path, tmp_path: Path) -> None:
    manifest = read_manifest(verified_dir)
    for row in manifest.section("verification")["results"]:
        row.pop("environment")
    write_manifest(verified_dir, manifest)
    with pytest.raises(
        ReleaseError,
        match=r"visual.onnx has a verdict from an unknown environment \(missing arch, cpu.*run 'clip-export verify' on this machine",
    ):
        release([verified_dir], tag="v1", out=tmp_path)
    assert not (tmp_path / "tiny-vit-v1").exists()


def test_merge_refuses_another_model(verified_dir: Path, tmp_path: Path) -> None:
    other = export_onnx(resolve("tiny-rn", random_init=True), out=tmp_path).model_dir
    with pytest.raises(ReleaseError, match="another model"):
        merge_manifests([verified_dir, other])


def test_upload_without_gh_fails_cleanly(verified_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    result = CliRunner().invoke(
        main, ["release", str(verified_dir), "--tag", "v3", "--out", str(tmp_path / "dist"), "--upload", "-q"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: --upload needs the GitHub CLI 'gh'") and result.stderr.count("\n") == 1


def test_external_data_is_renamed_and_still_loads(tmp_path: Path) -> None:
    model_dir = export_onnx(
        resolve("tiny-vit", random_init=True), out=tmp_path / "a", towers=["visual"], external_data=True
    ).model_dir
    assert verify(model_dir).passed
    result = release([model_dir], tag="v1", out=tmp_path / "dist")
    assert "tiny-vit-visual-fp32.onnx.data" in result.assets
    runtime = ClipOnnx.from_release(result.directory)
    assert runtime.embed_images([np_image()]).shape == (1, 32)


def np_image():  # type: ignore[no-untyped-def]
    from PIL import Image

    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))


@pytest.mark.parametrize("preprocess", ["fast", "exact"])
def test_runtime_matches_the_torch_reference(verified_dir: Path, tmp_path: Path, preprocess: str) -> None:
    directory = release([verified_dir], tag="v1", out=tmp_path / "dist").directory
    runtime = ClipOnnx.from_release(directory, preprocess=preprocess)
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    images = sorted((Path(__file__).resolve().parents[3] / "clip_export" / "evalset" / "images").iterdir())[:5]
    from PIL import Image

    pixels = np.stack([preprocess_reference(Image.open(p), loaded.preprocess) for p in images])
    expected = torch_embed(loaded, "visual", pixels, normalize=True)
    got = runtime.embed_images(images)
    assert np.abs(got - expected).mean() <= THRESHOLDS["fp32"].mean_abs_normalized
    captions = ["a cat", "", "宇宙飛行士の写真"]
    ids = np.asarray(loaded.tokenize(captions))
    expected_text = torch_embed(loaded, "text", ids, normalize=True)
    assert np.abs(runtime.embed_texts(captions) - expected_text).mean() <= THRESHOLDS["fp32"].mean_abs_normalized


def test_runtime_refuses_an_unknown_preprocessing(verified_dir: Path) -> None:
    with pytest.raises(ClipExportError, match="the requested preprocessing was 'torchvision'; available: fast, exact"):
        ClipOnnx.from_release(verified_dir, preprocess="torchvision")


def test_runtime_checks_hashes_on_load(verified_dir: Path, tmp_path: Path) -> None:
    directory = release([verified_dir], tag="v1", out=tmp_path / "dist").directory
    flip_byte(directory / "tiny-vit-visual-fp32.onnx")
    with pytest.raises(IntegrityError, match="refusing to load tiny-vit-visual-fp32.onnx"):
        ClipOnnx.from_release(directory)


def test_pipeline_end_to_end(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "pipeline",
            "tiny-vit",
            "--random-init",
            "--precisions",
            "fp32,fp16,int8",
            "--out",
            str(tmp_path),
            "--json",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    vnni_here = INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags)
    data = json.loads(result.stdout)
    assert data["stages_done"] == ["export", "fp16", "int8", "verify", "bench"] and data["failed_stage"] is None
    rows = {r["artifact"]: r for r in data["summary"]}
    assert set(rows) == {
        "visual.onnx",
        "text.onnx",
        "visual.fp16.onnx",
        "text.fp16.onnx",
        "visual.uint8.onnx",
        "text.uint8.onnx",
        *(("visual.int8.onnx", "text.int8.onnx") if vnni_here else ()),
    }
    assert all(r["verdict"] == "pass" and r["batch1_p50_ms"] > 0 for r in rows.values())
    assert len(data["notes"]) == (0 if vnni_here else 1)


def test_pipeline_stops_at_the_failed_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_export.core import conversion
    from clip_export.core.checks import ArtifactCheck

    def failing_gate(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
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

    monkeypatch.setattr(conversion, "gate", failing_gate)
    result = CliRunner().invoke(
        main, ["pipeline", "tiny-vit", "--random-init", "--precisions", "fp32,int8", "--out", str(tmp_path), "-q"]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: the int8 gate failed") and "text2image_top1" in result.stderr
    assert "stages passed: export" in result.stdout
    assert (tmp_path / "tiny-vit" / "visual.onnx").exists() and not (
        tmp_path / "tiny-vit" / "visual.int8.onnx"
    ).exists()


def _fake_gh(tmp_path: Path, auth_ok: bool, upload_ok: bool) -> Path:
    """A stand-in `gh` on PATH that logs its arguments; it uploads nothing anywhere."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "gh.log"
    script = bin_dir / "gh"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$@" >> {log}\n'
        f'case "$1 $2" in\n'
        f'  "auth status") exit {0 if auth_ok else 1} ;;\n'
        f'  "release view") exit 1 ;;\n'
        f'  "release create") exit 0 ;;\n'
        f'  "release upload") {"exit 0" if upload_ok else "echo HTTP 502 >&2; exit 1"} ;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("auth_ok", "upload_ok", "expected"),
    [(False, True, "not authenticated"), (True, False, "gh release upload v9 failed"), (True, True, None)],
)
def test_upload_through_gh(
    verified_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    auth_ok: bool,
    upload_ok: bool,
    expected: str | None,
) -> None:
    import os

    monkeypatch.setenv("PATH", f"{_fake_gh(tmp_path, auth_ok, upload_ok)}{os.pathsep}{os.environ['PATH']}")
    runner = CliRunner()
    result = runner.invoke(
        main, ["release", str(verified_dir), "--tag", "v9", "--out", str(tmp_path / "dist"), "--upload", "-q"]
    )
    calls = (tmp_path / "gh.log").read_text().splitlines()
    if expected is None:
        assert result.exit_code == 0 and "(uploaded)" in result.stdout
        upload = next(c for c in calls if c.startswith("release upload v9"))
        assert upload.count("tiny-vit-") >= 3 and "SHA256SUMS" in upload and "MODEL_CARD.md" in upload
        assert any(c.startswith("release create v9") for c in calls)
    else:
        assert result.exit_code == 1 and expected in result.stderr and result.stderr.count("\n") == 1


def test_model_card_variant_table_has_size_speed_and_fidelity() -> None:
    from clip_export.stages.release.model_card import variant_table

    manifest = {
        "artifacts": [
            ArtifactEntry("visual.onnx", "0" * 64, 400, "visual", "fp32", "onnx").to_json(),
            ArtifactEntry("visual.q4.onnx", "1" * 64, 100, "visual", "q4", "onnx").to_json(),
            ArtifactEntry("visual.preprocessing.onnx", "2" * 64, 401, "visual", "fp32", "onnx-preprocessing").to_json(),
        ],
        "verification": {
            "results": [
                {
                    "path": "visual.q4.onnx",
                    "status": "pass",
                    "metrics": {
                        "mean_abs_normalized": 3e-3,
                        "min_cosine": 0.995,
                        "image2image_top1": 1.0,
                        "text2image_top1": 0.96,
                    },
                }
            ]
        },
        "benchmark": {
            "machine": {"cpu": "AMD EPYC"},
            "rows": [
                {"name": "visual.onnx", "kind": "artifact", "batch": 1, "latency": {"p50_ms": 30.0}},
                {"name": "visual.q4.onnx", "kind": "artifact", "batch": 1, "latency": {"p50_ms": 20.0}},
            ],
        },
    }
    lines = variant_table(Manifest.from_json(manifest, "test"))
    q4 = next(line for line in lines if line.startswith("| visual.q4.onnx"))
    assert "| 0.25 |" in q4 and "| 20.00 | 1.50× |" in q4 and "3.00e-03" in q4 and "| 0.960 | pass |" in q4
    pre = next(line for line in lines if line.startswith("| visual.preprocessing.onnx"))
    assert "| yes |" in pre and pre.endswith("not verified |")
    assert "AMD EPYC" in lines[1]


def test_release_refuses_a_tokenizer_changed_after_verify(verified_dir: Path, tmp_path: Path) -> None:
    swap_tokenizer_ids(verified_dir)  # re-hashed: new bytes that no verify has seen
    with pytest.raises(
        ReleaseError, match="tokenizer.json has no verdict for its current bytes; run 'clip-export verify"
    ):
        release([verified_dir], tag="v1", out=tmp_path)


def test_release_refuses_external_data_the_manifest_does_not_list(tiny_vit_copy: Path, tmp_path: Path) -> None:
    from ...helpers import move_weights_to_unlisted_data

    move_weights_to_unlisted_data(tiny_vit_copy)
    verify(tiny_vit_copy)  # before #19 this passed, and release shipped the graph without its weights
    with pytest.raises(ReleaseError, match="'visual.onnx.extra' that the manifest does not list"):
        release([tiny_vit_copy], tag="v1", out=tmp_path)
    assert not (tmp_path / "tiny-vit-v1").exists()


def test_a_file_replaced_while_release_runs_is_refused(
    verified_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clip_export.stages.release.release as module

    original = module.merge_manifests

    def merge_then_replace(dirs):  # the checks have passed; now the file changes under the release
        merged = original(dirs)
        flip_byte(verified_dir / "text.onnx")
        return merged

    monkeypatch.setattr(module, "merge_manifests", merge_then_replace)
    with pytest.raises(ReleaseError, match="text.onnx changed while the release was written"):
        release([verified_dir], tag="v1", out=tmp_path)
    assert not (tmp_path / "tiny-vit-v1").exists()


def test_release_refuses_a_pass_under_overridden_thresholds(tiny_vit_copy: Path, tmp_path: Path) -> None:
    assert verify(tiny_vit_copy, thresholds={"fp32.min_cosine": -1.0}).passed
    with pytest.raises(ReleaseError, match="passed 'clip-export verify' only with thresholds overridden"):
        release([tiny_vit_copy], tag="v1", out=tmp_path)
    result = release([tiny_vit_copy], tag="v1", out=tmp_path, client_check="off", allow_overridden=True)
    card = (result.directory / "MODEL_CARD.md").read_text()
    assert "pass (thresholds overridden: fp32.min_cosine=-1)" in card


def test_a_provider_that_never_ran_is_not_run_in_the_card(tiny_vit_copy: Path, tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA runs here")
    verify(tiny_vit_copy, providers=("cpu", "cuda"))  # the cuda rows cannot run on this machine
    result = release([tiny_vit_copy], tag="v1", out=tmp_path, client_check="off")
    card = (result.directory / "MODEL_CARD.md").read_text()
    assert "| tiny-vit-visual-fp32.onnx | CUDAExecutionProvider | - | - | not run |" in card
    assert "nan" not in card and "| None |" not in card


def test_a_verdict_covers_the_settings_it_was_obtained_with(tiny_vit_copy: Path, tmp_path: Path) -> None:
    """A verdict recorded the artifact's bytes only: an edited preprocessing setting shipped as verified."""
    from clip_export.core.manifest import passing_rows, settings_digest

    assert verify(tiny_vit_copy).passed
    manifest = read_manifest(tiny_vit_copy)
    visual = next(a for a in manifest.artifacts if a.tower == "visual")
    assert passing_rows(manifest, visual) and {
        r["settings_sha256"] for r in manifest.section("verification")["results"]
    } == {settings_digest(manifest)}
    manifest.section("preprocess")["mean"] = [0.9, 0.1, 0.9]
    write_manifest(tiny_vit_copy, manifest)
    assert passing_rows(read_manifest(tiny_vit_copy), visual) == []
    with pytest.raises(
        ReleaseError,
        match="passed 'clip-export verify' with other model, preprocessing, tokenizer or reference settings",
    ):
        release([tiny_vit_copy], tag="v1", out=tmp_path / "dist")


def test_release_fails_at_once_while_another_run_holds_a_source_lock(verified_dir: Path, tmp_path: Path) -> None:
    """A release copies, hashes and publishes under the source's own lock: a run holding it (an int8
    or verify writing the directory) makes release fail at once, before anything is copied."""
    import sys

    from clip_export.core.errors import OutputError

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from clip_export.core.manifest import exclusive\n"
            f"with exclusive({str(verified_dir)!r}):\n    print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"another clip-export run \\(pid {holder.pid}\\) is writing"):
            release([verified_dir], tag="v1", out=tmp_path / "dist", client_check="off")
        assert not (tmp_path / "dist").exists()
    finally:
        holder.kill()
        holder.wait()
    assert release([verified_dir], tag="v1", out=tmp_path / "dist", client_check="off").directory.is_dir()


def test_client_check_require_fails_before_copying_anything(
    verified_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to fail only after every asset had been copied and hashed (minutes on ViT-L/14)."""
    import clip_export.stages.release.release as module

    monkeypatch.setenv("CLIP_EXPORT_NODE_MODULES", str(tmp_path / "no_modules"))
    monkeypatch.setattr(module, "_copy_plain", lambda *a: pytest.fail("an asset was copied"))
    with pytest.raises(ReleaseError, match="--client-check require: .*is not installed"):
        release([verified_dir], tag="v1", out=tmp_path / "dist", client_check="require")
    assert not (tmp_path / "dist").exists()
