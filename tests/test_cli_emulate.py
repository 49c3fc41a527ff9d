"""A command of ours under qemu-x86_64 -cpu MODEL: refusals name what is missing, qemu's own noise is
dropped, the exit code and our output pass through."""

from __future__ import annotations

import shutil

import pytest

from clip_export import cli_emulate
from clip_export.cli_emulate import QEMU_NOISE, qemu_cpu_models, run_emulated
from clip_export.core.errors import ClipExportError


def _qemu() -> str:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        pytest.skip("qemu-x86_64 is not installed (apt-get install qemu-user; .ci/run installs it)")
    return qemu


def test_without_qemu_the_error_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_emulate.shutil, "which", lambda name: None)
    with pytest.raises(
        ClipExportError, match=r"under qemu-x86_64, which is not on PATH \(Debian: apt-get install qemu-user\)"
    ):
        run_emulated("Haswell", ["models"], out=print, err=print)


def test_an_unknown_cpu_model_is_refused_with_the_models_there_are(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli_emulate.shutil, "which", lambda name: "/usr/bin/qemu-x86_64")
    monkeypatch.setattr(cli_emulate.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cli_emulate, "qemu_cpu_models", lambda qemu: ["Haswell", "Haswell-v4", "Skylake-Client"])
    with pytest.raises(ClipExportError) as raised:
        run_emulated("Haswel", ["models"], out=print, err=print)
    assert str(raised.value).startswith("qemu-x86_64 has no CPU model 'Haswel'; it has Haswell, Skylake-Client (")


def test_qemu_lists_the_models_it_emulates() -> None:
    models = qemu_cpu_models(_qemu())
    assert {"Haswell", "Skylake-Client"} <= set(models) and "help" not in models


@pytest.mark.emulated
def test_a_command_runs_under_the_emulated_cpu_and_its_output_passes_through() -> None:
    _qemu()
    out: list[str] = []
    err: list[str] = []
    code = run_emulated("Haswell", ["models"], out=out.append, err=err.append)
    assert code == 0 and any("ViT-B/32" in line for line in out)
    assert not [line for line in err if line.startswith(QEMU_NOISE)]
    assert run_emulated("Haswell", ["no-such-command"], out=out.append, err=err.append) == 2
    assert any("No such command 'no-such-command'" in line for line in err)
