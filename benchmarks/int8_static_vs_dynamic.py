"""Static (calibrated) vs dynamic INT8 for the ViT-B/32 image tower: speed and fidelity at batch 1.

    python benchmarks/int8_static_vs_dynamic.py

Needs benchmarks/.work/ViT-B-32 from benchmarks/cpu_report.py. Calibrates on the bundled set's
pixel values and compares with the dynamic INT8 artifact and the fp32 export in one process.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from clip_export.core.metrics import l2_normalize

MODEL_DIR = Path(__file__).parent / ".work" / "ViT-B-32"


class BundledPixels(CalibrationDataReader):
    def __init__(self, pixels: np.ndarray) -> None:
        self.batches = iter([{"pixel_values": pixels[i : i + 1]} for i in range(len(pixels))])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def measure(path: Path, pixels: np.ndarray, reference: np.ndarray) -> tuple[float, float, float]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    one = pixels[:1]
    for _ in range(5):
        session.run(None, {"pixel_values": one})
    samples = []
    for _ in range(40):
        start = time.perf_counter()
        session.run(None, {"pixel_values": one})
        samples.append(time.perf_counter() - start)
    out = np.concatenate([session.run(None, {"pixel_values": pixels[i : i + 1]})[0] for i in range(len(pixels))])
    got, ref = l2_normalize(out), l2_normalize(reference)
    return float(np.median(samples) * 1000), float(np.abs(got - ref).mean()), float((got * ref).sum(1).min())


def main() -> None:
    logging.getLogger().setLevel(logging.ERROR)
    with np.load(MODEL_DIR / "reference.npz") as data:
        pixels, reference = data["pixel_values"], data["image_embeds"]
    prepared = MODEL_DIR / ".visual.pre.onnx"
    quant_pre_process(str(MODEL_DIR / "visual.onnx"), str(prepared))
    candidates = {
        "fp32 ONNX": MODEL_DIR / "visual.onnx",
        "dynamic INT8 (clip-export int8)": MODEL_DIR / "visual.int8.onnx",
    }
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        target = MODEL_DIR / f".visual.static-{fmt.name}.onnx"
        quantize_static(
            str(prepared),
            str(target),
            BundledPixels(pixels),
            quant_format=fmt,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"MatMulConstBOnly": True},
        )
        candidates[f"static INT8, {fmt.name}"] = target
    print("| artifact | p50 ms | normalised mean abs diff | min cosine |\n|---|---|---|---|")
    for name, path in candidates.items():
        p50, delta, cosine = measure(path, pixels, reference)
        print(f"| {name} | {p50:.1f} | {delta:.1e} | {cosine:.5f} |")
    for leftover in MODEL_DIR.glob(".visual.*"):
        leftover.unlink()


if __name__ == "__main__":
    main()
