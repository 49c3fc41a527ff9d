"""Could onnxruntime's Resize replace PIL's for preprocessing? Fidelity and speed, side by side.

    python benchmarks/ort_resize.py [--runs 100]

Resizes the report's 640×427 JPEG to the reference's 335×224 with PIL's bicubic filter and with
ONNX Resize (cubic, a = -0.5, antialias, uint8 NHWC) in onnxruntime on 2 threads, and compares the
pixels and the median time of each, the calls alternated.
"""

from __future__ import annotations

import argparse

import numpy as np
from onnx import TensorProto, helper
from PIL import Image

from clip_export.core.preprocess import shortest_side_size
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.stages.bench.preprocessing_study import report_images
from clip_export.stages.bench.timing import time_interleaved


def resize_model() -> bytes:
    node = helper.make_node(
        "Resize",
        ["x", "", "", "sizes"],
        ["y"],
        mode="cubic",
        antialias=1,
        cubic_coeff_a=-0.5,
        exclude_outside=1,
        coordinate_transformation_mode="half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [
            helper.make_tensor_value_info("x", TensorProto.UINT8, [None, None, None, None]),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]).SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    session = create_session(resize_model(), SessionOptions(intra_op_threads=2))
    image = Image.open(report_images()[1]).convert("RGB")
    width, height = shortest_side_size(*image.size, 224)
    pixels = np.asarray(image)[None]
    sizes = np.array([1, height, width, 3], np.int64)
    reference = np.asarray(image.resize((width, height), Image.BICUBIC)).astype(np.int16)
    ours = session.run(None, {"x": pixels, "sizes": sizes})[0][0].astype(np.int16)
    delta = np.abs(ours - reference)
    pil_ms, ort_ms = time_interleaved(
        [
            lambda: image.resize((width, height), Image.BICUBIC),
            lambda: session.run(None, {"x": pixels, "sizes": sizes}),
        ],
        rounds=args.runs,
    )
    print(
        f"{image.size[0]}x{image.size[1]} -> {width}x{height}: PIL {pil_ms:.2f} ms, onnxruntime Resize {ort_ms:.2f} ms; "
        f"max pixel difference {delta.max()} uint8 steps on {(delta > 0).mean() * 100:.3f}% of values"
    )


if __name__ == "__main__":
    main()
