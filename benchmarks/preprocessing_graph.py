"""Preprocessing inside the graph against PIL and the runtime's fast path, on the report's two images.

    python benchmarks/preprocessing_graph.py [--rounds 40]

Each image is decoded once; then PIL's exact pipeline (open_clip's pixels), the runtime's default
vectorised path (same pixels) and the ONNX preprocessing graph (uint8 RGB in, pixel_values out, in
onnxruntime on 1 and on 2 threads) run interleaved, and the graph's pixels are compared with PIL's.
"""

from __future__ import annotations

import argparse
import platform
from typing import Any

import numpy as np

from clip_export.core.models import PreprocessConfig
from clip_export.core.preprocess import load_image, preprocess_fast, preprocess_reference
from clip_export.core.preprocess_graph import preprocessing_model, rgb_uint8
from clip_export.core.sessions import SessionOptions, create_session, ort
from clip_export.core.spec import RAW_IMAGE_INPUT
from clip_export.stages.bench.preprocessing_study import report_images
from clip_export.stages.bench.timing import time_interleaved

CONFIG = PreprocessConfig((224, 224), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def session(threads: int) -> Any:
    return create_session(preprocessing_model(CONFIG).SerializeToString(), SessionOptions(intra_op_threads=threads))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    one, two = session(1), session(2)
    print(
        f"CPU: {platform.processor() or 'see /proc/cpuinfo'}; onnxruntime {ort().__version__}; {args.rounds} interleaved rounds, p50 ms\n"
    )
    print(
        "| image | PIL (exact) | runtime fast path (exact) | graph, 1 thread | graph, 2 threads | graph ÷ PIL (1 thread) | pixel mean abs diff | pixel max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in report_images():
        image = load_image(path)
        rgb = rgb_uint8(path)  # what a client hands the graph: decoded, alpha dropped
        preprocess_fast(image, CONFIG)  # compile the kernels outside the timing
        calls = [
            lambda: preprocess_reference(image, CONFIG),
            lambda: preprocess_fast(image, CONFIG),
            lambda: one.run(None, {RAW_IMAGE_INPUT: rgb}),
            lambda: two.run(None, {RAW_IMAGE_INPUT: rgb}),
        ]
        pil, fast, g1, g2 = time_interleaved(calls, rounds=args.rounds, warmup=3)
        delta = np.abs(one.run(None, {RAW_IMAGE_INPUT: rgb})[0][0] - preprocess_reference(image, CONFIG))
        print(
            f"| {path.name} {image.width}x{image.height} {image.mode} | {pil:.2f} | {fast:.2f} | {g1:.2f} | {g2:.2f} | {g1 / pil:.2f} | {delta.mean():.4f} | {delta.max():.4f} |"
        )


if __name__ == "__main__":
    main()
