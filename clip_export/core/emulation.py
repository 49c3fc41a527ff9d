"""A command of ours run under `qemu-x86_64 -cpu MODEL`: onnxruntime picks its kernels from CPUID, which
qemu answers for the emulated CPU, so `verify --emulate Haswell` checks the bytes on the AVX2 kernels
a CPU without VNNI runs, from a machine that has VNNI. The verdict records the emulation itself
(core.environment: CPUID reports less than the host's kernel), never the emulated CPU as real.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence

from clip_export.core.errors import ClipExportError

QEMU = "qemu-x86_64"
# qemu's own line for each CPU feature of the model its translator lacks (pcid, x2apic, hle, …), printed
# by every process and thread it starts: dozens of lines that say nothing about the artifacts.
QEMU_NOISE = f"{QEMU}: warning: TCG doesn't support requested feature"
# This Python under qemu: Click's prog name as the user typed it, whatever argv[0] qemu passes on.
_ENTRY = "import sys; from clip_export.cli import main; main(args=sys.argv[1:], prog_name='clip-export')"


def qemu_cpu_models(qemu: str) -> list[str]:
    """The CPU models `qemu-x86_64 -cpu help` lists (Haswell, Skylake-Client-v4, …)."""
    listed = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, timeout=60).stdout
    return [line.split()[1] for line in listed.splitlines() if line.startswith("x86 ") and len(line.split()) > 1]


def run_emulated(cpu: str, args: Sequence[str], out: Callable[[str], None], err: Callable[[str], None]) -> int:
    """`clip-export ARGS` in this Python under `qemu-x86_64 -cpu CPU`; its output lines go to `out` and
    `err` as they come (less QEMU_NOISE). Returns its exit code."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise ClipExportError(
            f"--emulate {cpu} runs this command under {QEMU}, which is not on PATH (Debian: apt-get install qemu-user)"
        )
    if platform.machine() not in ("x86_64", "AMD64"):
        raise ClipExportError(
            f"--emulate {cpu} runs this Python's own build under {QEMU}; this machine is {platform.machine()}, "
            "whose Python qemu-x86_64 cannot run"
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
    reader = threading.Thread(target=lambda: [out(line) for line in process.stdout], daemon=True)  # type: ignore[union-attr]
    reader.start()
    for line in process.stderr:
        if not line.startswith(QEMU_NOISE):
            err(line)
    reader.join()
    return process.wait()
