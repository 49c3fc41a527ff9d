"""`clip-export verify --emulate CPU`: the same command run again in this Python under `qemu-x86_64
-cpu CPU`. onnxruntime picks its kernels from CPUID, which qemu answers for the emulated CPU, so a
machine with VNNI checks the bytes on the AVX2 kernels a CPU without it runs. The verdict records the
emulation itself (core.environment), never the emulated CPU as a real one.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from clip_export.core.errors import ClipExportError

QEMU = "qemu-x86_64"
# qemu's own line for each CPU feature of the model its translator lacks (pcid, x2apic, hle, …), printed
# by every process and thread it starts: dozens of lines that say nothing about the artifacts.
QEMU_NOISE = f"{QEMU}: warning: TCG doesn't support requested feature"
# This Python under qemu: Click's prog name as the user typed it, whatever argv[0] qemu passes on.
_ENTRY = "import sys; from clip_export.cli import main; main(args=sys.argv[1:], prog_name='clip-export')"


def qemu_cpu_models(qemu: str) -> list[str]:
    """The CPU models `qemu-x86_64 -cpu help` lists (Haswell, Skylake-Client-v4, …)."""
    try:
        listed = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClipExportError(f"{qemu} -cpu help did not list its CPU models: {exc}") from exc
    return [line.split()[1] for line in listed.splitlines() if line.startswith("x86 ") and len(line.split()) > 1]


def run_emulated(cpu: str, args: Sequence[str], out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """`clip-export ARGS` in this Python under `qemu-x86_64 -cpu CPU`; its output lines go to `out` and
    `err` as they come (less QEMU_NOISE). Returns its exit code (1, with an Error line, if a signal
    ended it)."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise ClipExportError(
            f"--emulate {cpu} runs this command under {QEMU}, which is not on PATH (Debian: apt-get install qemu-user)"
        )
    if platform.machine() not in ("x86_64", "AMD64"):
        raise ClipExportError(
            f"--emulate {cpu} runs this Python's own build under {QEMU}; this machine is {platform.machine()}, "
            f"whose Python {QEMU} cannot run"
        )
    models = qemu_cpu_models(qemu)
    if cpu not in models:
        shown = ", ".join(m for m in models if not re.search(r"-v\d+$", m))  # Haswell-v4 … are versions
        raise ClipExportError(f"{QEMU} has no CPU model {cpu!r}; it has {shown} (and their versions: {QEMU} -cpu help)")
    process = subprocess.Popen(
        [qemu, "-cpu", cpu, sys.executable, "-c", _ENTRY, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stderr is not None
    failed: list[BaseException] = []

    def forward(stream: Any, to: Callable[[str], None], skip: str | None) -> None:
        """Pass lines on; if passing one on fails (a closed pipe downstream), stop the child and keep
        draining, so that neither side waits on a full pipe."""
        for line in stream:
            if failed or (skip and line.startswith(skip)):
                continue
            try:
                to(line)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the child is stopped
                failed.append(exc)
                process.kill()

    reader = threading.Thread(target=forward, args=(process.stdout, out, None), daemon=True)
    reader.start()
    forward(process.stderr, err, QEMU_NOISE)
    reader.join()
    code = process.wait()
    if failed:
        raise failed[0]
    if code < 0:
        err(f"Error: {QEMU} -cpu {cpu} was ended by signal {-code} before the command finished\n")
        return 1
    return code
