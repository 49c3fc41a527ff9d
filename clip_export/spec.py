"""The facts that export, convert, verify and bench all read: declared once, here."""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

BATCH_AXIS = "batch"
# The ONNX precisions export and convert produce (TensorRT engines are "fp32"/"fp16" with format "tensorrt").
PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 20
# torch 2.14's dynamo exporter emits opset 18 and newer; onnxruntime 1.3x runs up to 23.
SUPPORTED_OPSETS = range(18, 24)
# torch.export specialises a batch of 1 silently, so every export traces a batch of 2.
EXPORT_EXAMPLE_BATCH = 2
# onnx protobuf files cannot exceed 2 GiB; larger towers go to external data.
EXTERNAL_DATA_THRESHOLD_BYTES = 2 * 1024**3 - 64 * 1024**2
# The fp32 torch embeddings of the evaluation set, stored beside the artifacts so verify and the
# runtime's serve-time check need no torch.
REFERENCE_NAME = "reference.npz"
# The tokenizer every export bundles for the torch-free runtime (clip_export.tokenizer); also the
# file a --tokenizer DIR must hold.
TOKENIZER_NAME = "tokenizer.json"
# How many reference images and captions ClipOnnx.from_release runs through each artifact before
# it serves: enough to catch kernels that break an artifact here, cheap enough for start-up.
SERVE_CHECK_ITEMS = 4
SERVE_CHECK_MODES = ("auto", "always", "off")


@dataclass(frozen=True)
class TowerSpec:
    name: str
    input_name: str
    input_dtype: str
    output_name: str

    def input_shape(self, context_length: int, image_size: tuple[int, int]) -> list[str | int]:
        if self.name == "visual":
            return [BATCH_AXIS, 3, image_size[0], image_size[1]]
        return [BATCH_AXIS, context_length]

    def output_shape(self, embed_dim: int) -> list[str | int]:
        return [BATCH_AXIS, embed_dim]


TOWERS: Mapping[str, TowerSpec] = MappingProxyType(
    {
        "visual": TowerSpec("visual", "pixel_values", "float32", "image_embeds"),
        "text": TowerSpec("text", "input_ids", "int64", "text_embeds"),
    }
)


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits for one precision; docs/metrics.md says where each number comes from."""

    mean_abs_normalized: float
    max_abs_normalized: float
    min_cosine: float
    top1_agreement: float
    top5_overlap: float

    def replace(self, **changes: float) -> "Thresholds":
        values = {**self.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        return Thresholds(**values)


THRESHOLDS: Mapping[str, Thresholds] = MappingProxyType(
    {
        "fp32": Thresholds(1e-5, 2e-4, 0.99999, 1.0, 0.99),
        "fp16": Thresholds(3e-4, 5e-3, 0.999, 1.0, 0.95),
        "int8": Thresholds(4e-3, 6e-2, 0.98, 0.98, 0.85),
        "trt-fp32": Thresholds(1e-5, 2e-4, 0.99999, 1.0, 0.99),
        "trt-fp16": Thresholds(3e-4, 5e-3, 0.999, 1.0, 0.95),
    }
)

# The export-time gate of the export issue: normalised mean |Δ| of an fp32 tower.
EXPORT_PARITY_TOLERANCE = THRESHOLDS["fp32"].mean_abs_normalized


@dataclass(frozen=True)
class Int8Scheme:
    """How `clip-export int8` quantizes weights (dynamic, MatMul/Gemm only); docs/convert.md has the per-CPU measurements."""

    weight_type: str  # "QInt8" | "QUInt8", onnxruntime.quantization.QuantType names
    per_channel: bool
    reduce_range: bool

    @property
    def label(self) -> str:
        return f"{self.weight_type} {'per-channel' if self.per_channel else 'per-tensor'}{', reduce_range' if self.reduce_range else ''}"


# Without VNNI, onnxruntime runs uint8 activations × int8 weights (U8S8) with vpmaddubsw, which adds
# pairs of products in int16 and saturates: QInt8 weights passed the gate on AVX-512 VNNI and failed
# it under AVX2 (visual mean |Δ| 5.6e-3, min cosine 0.972 on ViT-B/32). uint8 weights run U8U8
# kernels, which widen to int16 before multiplying and cannot saturate: the best fidelity on both
# tiers, at 4.2× torch eager on VNNI against 5.4-5.9× for 7-bit QInt8 (reduce_range), which also
# failed the tiny test model's text gate. Measured by benchmarks/int8_tiers.py (docs/convert.md).
INT8_SCHEME = Int8Scheme("QUInt8", per_channel=True, reduce_range=False)
INT8_CANDIDATE_SCHEMES = (
    Int8Scheme("QInt8", per_channel=True, reduce_range=False),
    Int8Scheme("QInt8", per_channel=True, reduce_range=True),
    INT8_SCHEME,
)


def threshold_key(precision: str, fmt: str) -> str:
    return f"trt-{precision}" if fmt == "tensorrt" else precision
