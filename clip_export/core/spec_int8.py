"""The INT8 facts spec.py declares (it re-exports every name here, and the package reads them from
spec): the schemes, the kernel families and which CPU each serves, and the fallbacks' rules."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the lowest layer: the record type is named, never imported at run time
    from clip_export.core.artifact import ArtifactEntry


@dataclass(frozen=True)
class Int8Scheme:
    """How `clip-export int8` quantizes weights (dynamic, MatMul/Gemm only); docs/convert.md has the per-CPU measurements."""

    weight_type: str  # "QInt8" | "QUInt8", onnxruntime.quantization.QuantType names
    per_channel: bool
    reduce_range: bool

    @property
    def label(self) -> str:
        return f"{self.weight_type} {'per-channel' if self.per_channel else 'per-tensor'}{', reduce_range' if self.reduce_range else ''}"


# Without VNNI, onnxruntime's U8S8 kernels (vpmaddubsw) saturate int16 pair sums: QInt8 weights failed
# the gate under AVX2 (ViT-B/32 visual 5.6e-3). uint8 weights run U8U8 kernels, which cannot saturate:
# they hold on every tier (benchmarks/int8_tiers.py, docs/convert.md).
INT8_SCHEME = Int8Scheme("QUInt8", per_channel=True, reduce_range=False)


@dataclass(frozen=True)
class Int8Family:
    """One INT8 artifact per onnxruntime kernel family: `clip-export int8` writes both, the runtime
    serves the one this CPU's flags call for (docs/convert.md)."""

    name: str
    scheme: Int8Scheme
    file_tag: str  # the artifact's precision tag in its file name (visual.uint8.onnx) and transformers.js's dtype
    requires_any_flag: tuple[str, ...]  # CPU flags one of which it needs to be exact; () = every x86 tier
    tiers: str  # in words, for the CLI and the model card

    def applies_to(self, isa_flags: Collection[str]) -> bool:
        return not self.requires_any_flag or any(f in isa_flags for f in self.requires_any_flag)


# The flags whose onnxruntime U8S8 kernels (vpdpbusd, AMX tiles) add u8×s8 products without
# saturating; without one of them AVX2's vpmaddubsw saturates QInt8 weights (see INT8_SCHEME).
INT8_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_FAMILIES: Mapping[str, Int8Family] = MappingProxyType(
    {
        # QInt8 per-channel: 3.7-4.8x the fp32 artifact on VNNI/AMX, against 1.1-1.7x for QUInt8.
        "vnni": Int8Family(
            "vnni",
            Int8Scheme("QInt8", per_channel=True, reduce_range=False),
            "int8",
            INT8_VNNI_FLAGS,
            "x86 with VNNI or AMX (avx512_vnni, avx_vnni, amx_int8)",
        ),
        "any-x86": Int8Family("any-x86", INT8_SCHEME, "uint8", (), "every x86 tier, AVX2 without VNNI included"),
    }
)


@dataclass(frozen=True)
class Int8Blockwise:
    """INT8's first fallback: 8-bit weights in blocks along the reduction axis, activations quantized
    per block inside onnxruntime's MatMulNBits (accuracy_level 4), so an outlier channel costs only
    its own block; on trained MiniLM-L6 it held with every MatMul quantized (docs/convert.md)."""

    bits: int
    block_size: int
    symmetric: bool
    accuracy_level: int

    @property
    def label(self) -> str:
        return f"blockwise {self.bits}-bit, blocks of {self.block_size} (MatMulNBits)"


INT8_BLOCKWISE = Int8Blockwise(bits=8, block_size=128, symmetric=True, accuracy_level=4)


@dataclass(frozen=True)
class Int8OutlierSplit:
    """INT8's fallback that keeps a family's weight type: the activation channels wider than `ratio` x
    their tensor's median channel on `calibration_items` reference inputs (at most `max_share` of a
    tensor's) leave the quantized MatMul for a float one beside it (core/outlier_split.py); on trained
    MiniLM-L6, 24 channels in 14 tensors, and the gate held at 2.4e-3 (docs/convert.md)."""

    ratio: float
    max_share: float
    calibration_items: int

    @property
    def label(self) -> str:
        return f"outlier channels (> {self.ratio:g}x the median) split off in float"


INT8_OUTLIER_SPLIT = Int8OutlierSplit(ratio=6.0, max_share=0.02, calibration_items=32)


# When a tower's plain scheme and INT8_BLOCKWISE fail its gate, `int8` keeps its most sensitive
# weight MatMuls in float (each measured quantized alone on this many reference inputs), one more at
# a time, up to this share of them: on trained MiniLM-L6 2 of 36 float held (docs/convert.md).
INT8_SENSITIVITY_ITEMS = 32
INT8_MIXED_MAX_FLOAT_SHARE = 0.25
# The conversion-record fields that say which family an INT8 artifact is (copied onto graphs derived from it).
INT8_FAMILY_KEYS = ("weight_type", "kernel_family", "for_cpus", "requires_any_cpu_flag")


def int8_family_for_weight_type(weight_type: str) -> Int8Family:
    """The family a weight type's kernels belong to: QInt8 → vnni (U8S8), QUInt8 → any-x86 (U8U8)."""
    return INT8_FAMILIES["vnni"] if weight_type == "QInt8" else INT8_FAMILIES["any-x86"]


def int8_family_of(entry: ArtifactEntry) -> Int8Family | None:
    """The kernel family of an int8 manifest entry (None for other precisions). Entries written
    before families name none; their weight type decides (the default was QUInt8 then)."""
    if entry.precision != "int8":
        return None
    conversion = entry.detail("conversion") or {}
    if conversion.get("kernel_family") in INT8_FAMILIES:
        return INT8_FAMILIES[conversion["kernel_family"]]
    return int8_family_for_weight_type(conversion.get("weight_type", "QUInt8"))


def int8_family_for_cpu(isa_flags: Collection[str]) -> Int8Family:
    """The family to serve on a CPU with these flags: QInt8 where VNNI/AMX add without saturating."""
    return INT8_FAMILIES["vnni"] if INT8_FAMILIES["vnni"].applies_to(isa_flags) else INT8_FAMILIES["any-x86"]


INT8_CANDIDATE_SCHEMES = (
    Int8Scheme("QInt8", per_channel=True, reduce_range=False),
    Int8Scheme("QInt8", per_channel=True, reduce_range=True),
    INT8_SCHEME,
)
