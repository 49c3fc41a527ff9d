from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from clip_export import __version__, load_model, resolve
from clip_export.cli import main
from clip_export.core.manifest import read_manifest


def run(*args: str) -> CliRunner.invoke:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_debug_shows_the_library_error_our_error_was_raised_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "manifest.json").write_text("{not json")
    monkeypatch.delenv("CLIP_EXPORT_DEBUG", raising=False)
    quiet = run("verify", str(tmp_path))
    assert quiet.exit_code == 1 and quiet.stderr.startswith("Error: ") and "Traceback" not in quiet.stderr
    monkeypatch.setenv("CLIP_EXPORT_DEBUG", "1")
    loud = run("verify", str(tmp_path))
    assert loud.exit_code == 1 and loud.stderr.strip().splitlines()[-1] == quiet.stderr.strip()
    cause, _, ours = loud.stderr.partition("The above exception was the direct cause of the following exception:")
    assert "json.decoder.JSONDecodeError" in cause and "clip_export.core.errors.ManifestError" in ours


def test_version_and_help_with_examples() -> None:
    assert run("--version").output.strip().endswith(__version__)
    for command in ([], ["onnx"], ["models"]):
        result = run(*command, "-h")
        assert result.exit_code == 0 and "Example" in result.output


def test_onnx_export_json(tmp_path: Path) -> None:
    result = run("onnx", "tiny-vit", "--random-init", "--out", str(tmp_path), "--json", "--towers", "visual")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["towers"][0]["tower"] == "visual" and data["towers"][0]["parity_mean_abs"] < 1e-5
    assert (tmp_path / "tiny-vit" / "manifest.json").exists()


def test_onnx_table_and_quiet(tmp_path: Path) -> None:
    out = tmp_path / "my artifacts"  # the hint must still be a command a shell runs
    result = run("onnx", "tiny-vit", "--random-init", "--out", str(out), "--quiet")
    assert result.exit_code == 0
    assert "mean |Δ| (norm.)" in result.stdout and result.stderr == ""
    assert f"Next: clip-export verify '{out}/tiny-vit'" in result.stdout
    assert " KiB " in result.stdout and " KB " not in result.stdout
    loud = run("onnx", "tiny-vit", "--random-init", "--out", str(out), "--force")
    assert "exporting the visual tower" in loud.stderr


def _error_line(result: object) -> str:
    lines = result.stderr.strip().splitlines()  # type: ignore[attr-defined]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    return lines[0]


def test_unknown_model(tmp_path: Path) -> None:
    result = run("onnx", "ViT-B/33", "--random-init", "--out", str(tmp_path))
    assert result.exit_code == 1 and "did you mean ViT-B/32" in _error_line(result)


def test_existing_output_refused_without_force(tmp_path: Path) -> None:
    assert run("onnx", "tiny-vit", "--random-init", "--out", str(tmp_path), "-q", "--towers", "visual").exit_code == 0
    result = run("onnx", "tiny-vit", "--random-init", "--out", str(tmp_path), "-q")
    assert result.exit_code == 1 and "--force" in _error_line(result)


def test_checkpoint_that_does_not_match(tmp_path: Path) -> None:
    ckpt = tmp_path / "rn.pt"
    torch.save(load_model(resolve("tiny-rn", random_init=True)).model.state_dict(), ckpt)
    result = run("onnx", "tiny-vit", "--weights", str(ckpt), "--out", str(tmp_path), "-q")
    assert result.exit_code == 1 and "does not match the architecture tiny-vit" in _error_line(result)


def test_unsafe_pickle(tmp_path: Path) -> None:
    ckpt = tmp_path / "evil.pt"
    torch.save({"fn": print}, ckpt)
    result = run("onnx", "tiny-vit", "--weights", str(ckpt), "--out", str(tmp_path), "-q")
    assert result.exit_code == 1 and "arbitrary pickle" in _error_line(result)


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run("onnx", "tiny-vit", "--random-init", "--out", str(blocker / "x"), "-q")
    assert result.exit_code == 1 and "not writable" in _error_line(result)


def test_unsupported_opset(tmp_path: Path) -> None:
    result = run("onnx", "tiny-vit", "--random-init", "--opset", "11", "--out", str(tmp_path), "-q")
    assert result.exit_code == 1 and "opset 11 is not supported" in _error_line(result)


def test_offline_pretrained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = run("onnx", "ViT-B/32", "--out", str(tmp_path), "-q")
    line = _error_line(result)
    assert result.exit_code == 1 and "--weights" in line and "--random-init" in line


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run("onnx").exit_code == 2
    assert run("onnx", "tiny-vit", "--towers", "audio", "--random-init").exit_code == 2
    assert run("onnx", "tiny-vit", "--opset", "x").exit_code == 2


def test_models_listing() -> None:
    result = run("models")
    assert result.exit_code == 0 and "ViT-L/14@336px" in result.stdout and "ViT-L-14-336-quickgelu" in result.stdout
    data = json.loads(run("models", "--json").stdout)
    assert any(row["name"] == "ViT-H-14" and "laion2b_s32b_b79k" in row["tags"] for row in data)


def test_verify_names_no_environment_for_a_provider_that_did_not_run(tiny_vit_copy: Path) -> None:
    """A CPU machine asked for CUDA: the CPU verdicts hold here, the CUDA rows are 'not run', never an environment."""
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here; the refusal path needs a CPU-only onnxruntime")
    result = run("verify", str(tiny_vit_copy), "--providers", "cpu,cuda", "--precision", "fp32")
    assert result.exit_code == 1
    held = next(line for line in result.stdout.splitlines() if line.startswith("verdicts hold for these bytes on: "))
    assert "CPU" in held and "CUDA" not in held
    assert "not run here, so no verdict: CUDAExecutionProvider" in result.stdout


def test_verify_emulate_without_qemu_is_one_error_line(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_export import cli_emulate

    monkeypatch.setattr(cli_emulate.shutil, "which", lambda name: None)
    result = run("verify", str(tiny_vit_copy), "--emulate", "Haswell")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip() == (
        "Error: --emulate Haswell runs this command under qemu-x86_64, which is not on PATH "
        "(Debian: apt-get install qemu-user)"
    )


def test_verify_emulate_forwards_every_other_option(
    tiny_vit_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each option of verify is given a value other than its default, and the emulated run must parse
    back to the same values: an option added later and not forwarded fails here."""
    from clip_export import cli_emulate
    from clip_export.cli_run import verify as verify_command

    seen: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(cli_emulate, "run_emulated", lambda cpu, args, out, err: seen.append((cpu, list(args))) or 0)
    (tmp_path / "captions.txt").write_text("a cat\n")
    (tmp_path / "w.safetensors").write_bytes(b"")
    given = [
        str(tiny_vit_copy),
        *("--providers", "cpu,cuda", "--reference", "torch", "--images", str(tmp_path)),
        *("--texts", str(tmp_path / "captions.txt"), "--precision", "int8"),
        *("--threshold", "fp16.mean_abs_normalized=5e-4", "--threshold", "int8.min_cosine=0.9"),
        *("--weights", str(tmp_path / "w.safetensors"), "--tokenizer", str(tmp_path), "--text-config", str(tmp_path)),
        *("--json", "-q"),
    ]
    assert run("verify", *given, "--emulate", "Haswell").exit_code == 0
    ((cpu, args),) = seen
    assert cpu == "Haswell" and args[0] == "verify"
    expected = verify_command.make_context("verify", list(given)).params
    assert verify_command.make_context("verify", args[1:]).params == expected
    defaults = {p.name: p.get_default(click.Context(verify_command)) for p in verify_command.params}
    assert [name for name, value in expected.items() if value == defaults[name] and name != "emulate"] == []


@pytest.mark.emulated
def test_verify_emulate_records_an_emulated_verdict(tiny_vit_copy: Path) -> None:
    """The options reach the emulated verify (here --precision and --json), and the verdict says it
    was emulated, in the output and in the manifest."""
    import shutil

    if shutil.which("qemu-x86_64") is None:
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user; .ci/run installs it)")
    result = run("verify", str(tiny_vit_copy), "--precision", "fp32", "--emulate", "Haswell", "--json", "-q")
    assert result.exit_code == 0, result.output
    (report,) = json.loads(result.stdout)
    checked = {c["path"]: c for c in report["checks"]}
    assert set(checked) == {"visual.onnx", "text.onnx", "tokenizer.json"}
    assert all(c["status"] == "pass" and c["environment"]["emulated_on"] for c in checked.values())
    assert {c["environment"]["cpu_target"] for c in checked.values()} == {"haswell (emulated)"}
    rows = read_manifest(tiny_vit_copy).section("verification")["results"]
    assert any(r["environment"].get("emulated_on") and r["path"] == "visual.onnx" for r in rows)


def test_a_converted_precision_without_options_needs_no_cli_code(
    tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command generated from a registry row converts, verifies, renders and maps errors like a
    hand-written one: here fp16's row drives its converter through the generated command."""
    from clip_export.cli_convert import conversion_command
    from clip_export.core.spec import PRECISION_SPECS, artifact_file_name

    monkeypatch.setitem(main.commands, "fp16", conversion_command(PRECISION_SPECS["fp16"]))
    generated_help = run("fp16", "-h").output
    assert "clip_export.stages.convert:convert_fp16" in generated_help and "--fuse" not in generated_help
    made = run("fp16", str(tiny_vit_copy), "--towers", "visual", "--quiet")
    assert made.exit_code == 0, made.output
    assert artifact_file_name("visual", "fp16") in made.output and "PASS" in made.output
    again = run("fp16", str(tiny_vit_copy), "--towers", "visual")
    assert again.exit_code == 1 and again.stderr.startswith("Error: ") and "--force" in again.stderr
    wrong = run("fp16", str(tiny_vit_copy), "--towers", "audio")
    assert wrong.exit_code == 2 and "audio" in wrong.output


def test_every_converted_precision_has_a_command_and_no_command_lacks_a_row() -> None:
    import click

    from clip_export.cli_convert import precision_commands
    from clip_export.core.spec import PRECISION_SPECS

    assert {p.name for p in PRECISION_SPECS.values() if p.converted} <= set(main.commands)
    with pytest.raises(RuntimeError, match="bf16"):
        precision_commands([click.Command("bf16")])
