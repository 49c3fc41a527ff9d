from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clip_export.core import environment
from clip_export.core.artifact import VerificationRow
from clip_export.core.environment import (
    VERSIONED_MODULES,
    Environment,
    current_environment,
    emulation_host,
    environment_table,
    versions,
)
from clip_export.core.errors import ManifestError


def _proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux's /proc/cpuinfo to compare with")
def test_the_kernel_flags_agree_with_the_kernel() -> None:
    env = current_environment("CPUExecutionProvider")
    proc = _proc_flags()
    for flag in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"):
        assert (flag in env.isa_flags) == (flag in proc), flag
    assert env.provider == "CPUExecutionProvider" and env.onnxruntime[0].isdigit() and env.cpu_target != "unknown"


def test_the_key_changes_with_what_selects_kernels() -> None:
    env = current_environment("CPUExecutionProvider")
    assert env.key == current_environment("CPUExecutionProvider").key
    for change in (
        {"provider": "CUDAExecutionProvider"},
        {"isa_flags": ("avx2", "fma")},
        {"onnxruntime": "0.1"},
        {"cpu_target": "haswell"},
    ):
        assert dataclasses.replace(env, **change).key != env.key, change
    assert dataclasses.replace(env, cpu="renamed host").key == env.key  # the marketing name selects nothing


@pytest.mark.parametrize(
    ("flags", "tier"),
    [
        (("avx2", "fma"), "AVX2 without VNNI"),
        (("avx2", "fma", "avx_vnni"), "AVX2 with AVX-VNNI"),
        (("avx2", "fma", "avx512f"), "AVX-512 without VNNI"),
        (("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16"), "AVX-512 with VNNI"),
        (("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_int8"), "AVX-512 with VNNI and AMX"),
    ],
)
def test_tiers(flags: tuple[str, ...], tier: str) -> None:
    env = Environment("cpu", "x", flags, "Linux", "x86_64", "1.32.0", "CPUExecutionProvider")
    assert env.tier == tier
    assert tier in env.describe()


ZEN4_KERNEL = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")


def test_an_emulator_is_told_by_its_process_name_or_by_cpuid_reporting_less_than_the_kernel() -> None:
    """qemu-user is the process (comm qemu-x86_64), answers CPUID for the CPU it emulates and passes
    the host's /proc/cpuinfo through: either mark is enough, so an AVX2-only host is told too."""
    host = emulation_host("AMD EPYC", "x86_64", ("avx2", "fma"), ZEN4_KERNEL, "qemu-x86_64")
    assert host == "AMD EPYC with avx512f, avx512bw, avx512_vnni, avx512_bf16, by qemu-x86_64"
    assert emulation_host("AMD EPYC", "x86_64", ("avx2", "fma"), ("avx2", "fma"), "qemu-x86_64") == (
        "AMD EPYC, by qemu-x86_64"
    )  # a Zen 3 emulating Haswell: the same flags
    assert emulation_host("AMD EPYC", "x86_64", ("avx2", "fma"), ZEN4_KERNEL, "python") == (
        "AMD EPYC with avx512f, avx512bw, avx512_vnni, avx512_bf16"
    )  # qemu renamed: the flags still tell
    assert emulation_host("AMD EPYC", "x86_64", ZEN4_KERNEL, ZEN4_KERNEL, "python") is None  # the CPU itself
    assert emulation_host("AMD EPYC", "x86_64", ("avx2", "fma"), (), "clip-export") is None  # cannot tell
    assert emulation_host("Neoverse", "aarch64", ("asimd",), ("asimd", "sve"), "python") is None
    # Linux before 5.16 lists AMX without enabling it, and LLVM does not report it: not an emulator
    sapphire = (*ZEN4_KERNEL, "amx_tile", "amx_int8", "amx_bf16")
    assert emulation_host("Intel Xeon", "x86_64", ZEN4_KERNEL, sapphire, "python") is None


def test_an_emulated_verdict_says_so_and_is_not_the_real_cpus() -> None:
    real = Environment("Intel Xeon", "haswell", ("avx2", "fma"), "Linux", "x86_64", "1.32.0", "CPUExecutionProvider")
    emulated = dataclasses.replace(
        real, cpu="AMD EPYC", cpu_target="haswell (emulated)", emulated_on="AMD EPYC with avx512f, avx512_vnni"
    )
    assert emulated.tier == real.tier == "AVX2 without VNNI"  # the kernels it selects
    assert (real.tier_label, emulated.tier_label) == ("AVX2 without VNNI", "AVX2 without VNNI (emulated)")
    assert emulated.key != real.key  # a real Haswell runs its own serve-time check
    # a reader that knows nothing of emulated_on (older clip-export) still computes the stored key
    older = {k: v for k, v in emulated.to_json().items() if k != "emulated_on"}
    assert Environment.from_json(older).key == emulated.key
    assert emulated.describe().startswith(
        "haswell emulated on AMD EPYC with avx512f, avx512_vnni (AVX2 without VNNI, emulated)"
    )
    assert Environment.from_json(emulated.to_json()) == emulated


def test_round_trip_and_refusals() -> None:
    env = current_environment("CPUExecutionProvider")
    assert Environment.from_json(env.to_json()) == env
    partial = env.to_json()
    del partial["isa_flags"], partial["provider"]
    with pytest.raises(
        ManifestError, match=r"text.onnx has a verdict from an unknown environment \(missing isa_flags, provider\)"
    ):
        Environment.from_json(partial, "text.onnx")
    with pytest.raises(ManifestError, match="unknown environment"):
        Environment.from_json(None, "text.onnx")
    edited = {**env.to_json(), "isa_flags": ["avx2"]}  # flags changed by hand, key left as it was
    with pytest.raises(ManifestError, match="environment key does not match its own fields"):
        Environment.from_json(edited, "text.onnx")


def test_environment_table_names_each_environment() -> None:
    env = current_environment("CPUExecutionProvider")
    rows = [
        {
            "path": "visual.onnx",
            "sha256": "ab" * 32,
            "status": "pass",
            "date": "2026-11-30",
            "environment": env.to_json(),
        },
        {"path": "visual.onnx", "sha256": "ab" * 32, "status": "fail", "date": "2026-11-29"},
    ]
    lines = environment_table([VerificationRow.from_json(r, f"row {i}") for i, r in enumerate(rows)])
    assert lines[2].startswith("| visual.onnx | `abababababab` | unknown environment") and "| fail |" in lines[2]
    assert env.describe() in lines[3] and "| pass |" in lines[3]


def test_versions_come_from_metadata_without_importing_torch() -> None:
    """`embed` records versions before its first item: reading them must not import torch or open_clip."""
    probe = (
        "import sys; from clip_export.core.environment import versions; found = versions(); "
        "print(sorted(found)); print('torch' in sys.modules, 'open_clip' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    listed, imported = done.stdout.strip().splitlines()
    assert imported == "False False"
    assert "'torch'" in listed and "'open_clip'" in listed and "'onnxruntime'" in listed


def test_versions_of_imported_modules_are_the_running_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "onnxscript", types.SimpleNamespace(__version__="9.9.9-running"))
    assert versions()["onnxscript"] == "9.9.9-running"  # not the installed metadata's version


@pytest.fixture
def fresh_distribution_scan() -> Iterator[None]:
    """versions() scans the installed distributions once a process: each test's fake scan is its own."""
    environment._distributions_by_module.cache_clear()
    yield
    environment._distributions_by_module.cache_clear()


def test_versions_find_another_build_of_a_module(
    monkeypatch: pytest.MonkeyPatch, fresh_distribution_scan: None
) -> None:
    """onnxruntime installed as another distribution (onnxruntime-openvino, a nightly) is still recorded."""
    from importlib import metadata

    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setitem(VERSIONED_MODULES, "onnxruntime", ("no-such-onnxruntime-build",))
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {"onnxruntime": ["onnxruntime"]})
    assert versions()["onnxruntime"] == metadata.version("onnxruntime")
    environment._distributions_by_module.cache_clear()
    monkeypatch.setattr(metadata, "packages_distributions", lambda: {})
    assert "onnxruntime" not in versions()


def test_versions_scan_the_installed_distributions_once_a_process(
    monkeypatch: pytest.MonkeyPatch, fresh_distribution_scan: None
) -> None:
    """Without an optional extra some modules are missing: the scan for other builds, which reads
    every distribution's metadata, must not run again for each of them on every call."""
    from importlib import metadata

    scans: list[int] = []

    def scan() -> dict[str, list[str]]:
        scans.append(1)
        return {}

    monkeypatch.setattr(metadata, "packages_distributions", scan)
    for missing in ("no_such_module_a", "no_such_module_b"):
        monkeypatch.setitem(VERSIONED_MODULES, missing, (f"{missing}-distribution",))
    first, second = versions(), versions()
    assert "no_such_module_a" not in first and "no_such_module_b" not in second
    assert first == second and len(scans) == 1
