"""Where a number was obtained: the CPU's kernel-selecting ISA flags, OS, onnxruntime and the provider.

A verdict is a claim about a machine: onnxruntime picks its kernels from what CPUID reports
(AVX2 without VNNI saturates INT8 sums that VNNI does not), so every verification row carries the
environment it ran in, and a pass is only reused where that environment is the same.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clip_export.core.errors import ManifestError
from clip_export.core.spec import EXECUTION_PROVIDERS, PROVIDERS, TENSORRT_RUNTIME, provider_label

if TYPE_CHECKING:
    from clip_export.core.artifact import VerificationRow

# CPUID features that change which onnxruntime/torch kernels run; Linux's /proc/cpuinfo names.
KERNEL_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
    "i8mm",
    "bf16",
)
# LLVM's names for the same features (llvmlite asks CPUID itself, so an emulated CPU reports its own).
_LLVM_NAMES = {
    "avx512vnni": "avx512_vnni",
    "avxvnni": "avx_vnni",
    "avx512bf16": "avx512_bf16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
    "neon": "asimd",
}
GPU_PROVIDERS = (*(p.ort_name for p in EXECUTION_PROVIDERS if p.gpu), TENSORRT_RUNTIME)
# Appended to `cpu_target` under an emulator. The key joins cpu_target, so an emulated verdict is keyed
# apart from the real CPU's (which then runs its own serve-time check, and whose rows an emulated
# verify never replaces), also by versions of clip-export that know nothing of emulation.
EMULATED = " (emulated)"


@dataclass(frozen=True)
class Environment:
    """The facts that decide which kernels produce an artifact's numbers."""

    cpu: str
    cpu_target: str  # LLVM's name for the microarchitecture CPUID reports (znver4, haswell, …)
    isa_flags: tuple[str, ...]
    os: str
    arch: str
    onnxruntime: str
    provider: str
    gpu: str | None = None
    compute_capability: str | None = None
    driver: str | None = None
    cuda: str | None = None
    tensorrt: str | None = None
    # Under a user-mode emulator (`qemu-x86_64 -cpu Haswell`, which answers CPUID for the CPU it
    # emulates): the host, with the kernel flags only it has. cpu_target then ends in EMULATED.
    emulated_on: str | None = None

    @property
    def tier(self) -> str:
        """The x86 tier in words, as the docs and the CLI name it."""
        flags = set(self.isa_flags)
        if self.arch not in ("x86_64", "AMD64"):
            return self.arch
        if "amx_int8" in flags:
            return "AVX-512 with VNNI and AMX"
        if "avx512_vnni" in flags:
            return "AVX-512 with VNNI"
        if "avx512f" in flags:
            return "AVX-512 without VNNI"
        if "avx_vnni" in flags:
            return "AVX2 with AVX-VNNI"
        return "AVX2 without VNNI" if "avx2" in flags else "no AVX2"

    @property
    def key(self) -> str:
        """Equal keys mean the same kernels on the same bytes: the ground for reusing a verdict."""
        parts = [
            self.arch,
            self.cpu_target,
            ",".join(self.isa_flags),
            self.os.split(" ")[0],
            self.onnxruntime,
            self.provider,
        ]
        if self.provider in GPU_PROVIDERS:
            parts += [
                self.gpu or "?",
                self.compute_capability or "?",
                self.driver or "?",
                self.cuda or "?",
                self.tensorrt or "-",
            ]
        return "|".join(parts)

    @property
    def emulated(self) -> bool:
        return self.cpu_target.endswith(EMULATED)

    @property
    def tier_label(self) -> str:
        """The tier as a verdict may claim it: an emulated CPU is named as such."""
        return f"{self.tier}{EMULATED}" if self.emulated else self.tier

    def describe(self) -> str:
        """One line for tables and error messages."""
        cpu = (
            f"{self.cpu_target.removesuffix(EMULATED)} emulated on {self.emulated_on or self.cpu} ({self.tier}, emulated)"
            if self.emulated
            else f"{self.cpu} ({self.cpu_target}, {self.tier})"
        )
        where = f"{cpu}, {self.os} {self.arch}, onnxruntime {self.onnxruntime} {provider_label(self.provider)}"
        if self.gpu:
            where += f", {self.gpu} (sm {self.compute_capability}, driver {self.driver}, CUDA {self.cuda}{', TensorRT ' + self.tensorrt if self.tensorrt else ''})"
        return where

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["isa_flags"] = list(self.isa_flags)
        data["tier"] = self.tier
        data["key"] = self.key
        return data

    @classmethod
    def from_json(cls, data: Any, where: str = "the manifest") -> Environment:
        """Refuses a record that does not say where it was obtained: such a verdict proves nothing here."""
        names = {f.name for f in fields(cls)}
        required = {"cpu", "cpu_target", "isa_flags", "os", "arch", "onnxruntime", "provider"}
        if not isinstance(data, dict) or not required <= set(data):
            missing = sorted(required - set(data)) if isinstance(data, dict) else sorted(required)
            raise ManifestError(
                f"{where} has a verdict from an unknown environment (missing {', '.join(missing)}); run 'clip-export "
                "verify' on this machine"
            )
        values = {k: v for k, v in data.items() if k in names}
        values["isa_flags"] = tuple(values["isa_flags"])
        env = cls(**values)
        if data.get("key") not in (None, env.key):
            raise ManifestError(
                f"{where} has a verdict whose environment key does not match its own fields (edited by hand?); "
                "run 'clip-export verify' again"
            )
        return env


def emulation_host(
    cpu: str, arch: str, cpuid_flags: Sequence[str], kernel_flags: Sequence[str], process_name: str
) -> str | None:
    """The host, when this x86 process runs under a user-mode emulator, else None.

    qemu-user runs as the process itself (its /proc/self/comm is qemu-x86_64), answers CPUID for the
    CPU it emulates, and passes the host's /proc/cpuinfo through: either mark is enough. A
    hypervisor masks CPUID and /proc/cpuinfo alike. AMX is left out of the comparison: kernels
    before 5.16 list amx_* without enabling the tile state, which LLVM (rightly) does not report."""
    if arch not in ("x86_64", "AMD64"):
        return None
    by_qemu = process_name.startswith("qemu-")
    only_host = [f for f in KERNEL_FLAGS if f in kernel_flags and f not in cpuid_flags and not f.startswith("amx")]
    if not (by_qemu or only_host):
        return None
    return cpu + (f" with {', '.join(only_host)}" if only_host else "") + (f", by {process_name}" if by_qemu else "")


@lru_cache(maxsize=1)
def _cpu() -> tuple[str, str, tuple[str, ...], str | None]:
    name = platform.processor() or platform.machine()
    proc_flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name in (platform.processor(), platform.machine()):
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not proc_flags:
                proc_flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    target, flags = "unknown", proc_flags
    try:
        import llvmlite.binding as llvm  # numba's; asks CPUID, which an emulator answers for the emulated CPU

        target = llvm.get_host_cpu_name()
        features = {_LLVM_NAMES.get(k, k) for k, on in llvm.get_host_cpu_features().items() if on}
        flags = features
    except Exception:  # llvmlite missing or unusable: /proc/cpuinfo is the next best source
        pass
    kernel_flags = tuple(f for f in KERNEL_FLAGS if f in flags)
    try:
        process_name = Path("/proc/self/comm").read_text().strip()
    except OSError:
        process_name = ""
    host = emulation_host(name, platform.machine(), kernel_flags, tuple(proc_flags), process_name)
    return name, target + EMULATED if host else target, kernel_flags, host


def _onnxruntime_version() -> str:
    try:
        import onnxruntime

        return str(onnxruntime.__version__)
    except ImportError:
        return "not installed"


@lru_cache(maxsize=4)
def _gpu(provider: str) -> dict[str, str | None]:
    """Card, compute capability, driver, CUDA and TensorRT versions, from nvidia-smi and the libraries."""
    info: dict[str, str | None] = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run(
            [smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        if done.returncode == 0 and done.stdout.strip():
            name, cc, driver = [part.strip() for part in done.stdout.strip().splitlines()[0].split(",")][:3]
            info.update(gpu=name, compute_capability=cc, driver=driver)
    try:
        from onnxruntime.capi import build_and_package_info as build

        info["cuda"] = getattr(build, "cuda_version", None)
    except ImportError:
        pass
    if provider in (PROVIDERS["tensorrt"], TENSORRT_RUNTIME):
        try:
            import tensorrt

            info["tensorrt"] = str(tensorrt.__version__)
        except ImportError:
            info["tensorrt"] = "not importable"
    return info


def current_environment(provider: str) -> Environment:
    """This process's environment for `provider`, the onnxruntime provider (or runtime) that ran."""
    name, target, flags, host = _cpu()
    gpu = _gpu(provider) if provider in GPU_PROVIDERS else {}
    return Environment(
        name,
        target,
        flags,
        f"{platform.system()} {platform.release()}",
        platform.machine(),
        _onnxruntime_version(),
        provider,
        **gpu,
        emulated_on=host,
    )


def environment_table(rows: Sequence[VerificationRow]) -> list[str]:
    """Markdown rows of verification records: artifact, sha256, environment, verdict, date (VERIFY.md, MODEL_CARD.md)."""
    lines = ["| artifact | sha256 | environment | verdict | date |", "|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.path, r.date or "")):
        where = (
            Environment.from_json(r.environment, f"the verdict for {r.path}").describe()
            if r.environment is not None
            else "unknown environment (verified before environments were recorded)"
        )
        lines.append(f"| {r.path} | `{(r.sha256 or '')[:12]}` | {where} | {r.status} | {r.date or '-'} |")
    return lines


# The libraries a result depends on: module name -> the distributions that install it. Read from the
# installed metadata, never by importing: importing open_clip pulls in torch and torchvision, several
# seconds that `embed` paid before its first item.
VERSIONED_MODULES: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "open_clip": ("open_clip_torch",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnxscript": ("onnxscript",),
    "tokenizers": ("tokenizers",),
    "PIL": ("pillow",),  # decodes every image; with imagecodecs, libspng decodes plain PNGs (core.png_decode)
    "imagecodecs": ("imagecodecs",),
}


def versions() -> dict[str, str]:
    """The library versions a result depends on, recorded beside it.

    A module already imported reports its own `__version__` (the code that ran); otherwise the
    installed distribution's metadata says which version an import would load."""
    from clip_export import __version__

    found = {"clip_export": __version__}
    for module, distributions in VERSIONED_MODULES.items():
        loaded = getattr(sys.modules.get(module), "__version__", None)
        if isinstance(loaded, str):
            found[module] = loaded
            continue
        # Another build of the module (onnxruntime-openvino, a nightly) is found by scanning every
        # installed distribution, only when the usual names are absent.
        version = _installed_version(distributions) or _installed_version(_distributions_by_module().get(module, []))
        if version is not None:
            found[module] = version
    return found


@lru_cache(maxsize=1)
def _distributions_by_module() -> dict[str, list[str]]:
    """Every installed distribution by the modules it provides, scanned once a process: the scan
    reads every distribution's metadata, and without an optional extra (torch, imagecodecs) every
    versions() call would otherwise pay it for each module missing."""
    return metadata.packages_distributions()


def _installed_version(distributions: Sequence[str]) -> str | None:
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return None
