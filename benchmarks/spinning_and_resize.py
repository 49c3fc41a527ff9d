"""Why ClipOnnx parks onnxruntime's workers after each run: the preprocessing that follows needs a core.

    python benchmarks/spinning_and_resize.py [--runs 100]

For the ViT-B/32 image tower (benchmarks/.work, from runtime_overhead.py or cpu_report.py), with
one session at a time: the session run, then straight after it the runtime's default preprocessing
(preprocess_fast) of the report's RGBA PNG, alternated, for onnxruntime workers left spinning, parked after each run
(session.force_spinning_stop), and spinning disabled.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from clip_export.core.manifest import read_manifest
from clip_export.core.preprocess import preprocess_fast
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.stages.bench.preprocessing_study import report_images
from clip_export.stages.bench.timing import time_interleaved

MODEL_DIR = Path(__file__).parent / ".work" / "ViT-B-32"
SETTINGS = {
    "spinning (onnxruntime default)": SessionOptions(intra_op_threads=2),
    "spinning, parked after run (ClipOnnx)": SessionOptions(intra_op_threads=2, stop_spinning_after_run=True),
    "no spinning": SessionOptions(intra_op_threads=2, allow_spinning=False),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    config = read_manifest(MODEL_DIR).preprocess
    png = Image.open(report_images()[0])
    png.load()
    pixels = preprocess_fast(png, config)[None]
    print("| onnxruntime workers | session.run p50 ms | preprocessing right after p50 ms |")
    print("|---|---|---|")
    for label, options in SETTINGS.items():
        session = create_session(MODEL_DIR / "visual.onnx", options)
        run_ms, resize_ms = time_interleaved(
            [lambda: session.run(None, {"pixel_values": pixels}), lambda: preprocess_fast(png, config)],
            rounds=args.runs,
            warmup=5,
        )
        print(f"| {label} | {run_ms:.2f} | {resize_ms:.2f} |")
        session = None  # one session alive at a time


if __name__ == "__main__":
    main()
