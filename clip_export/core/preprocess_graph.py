"""Preprocessing as ONNX: decoded uint8 RGB of any size in, the family's resize, crop and
normalisation in standard ops, spliced in front of a visual tower.

Every client (onnxruntime on the web, phones, Java, C#) then runs open_clip's preprocessing without
re-implementing it. The size rule is torchvision's, computed in the graph from the input's shape:
short side → S, long side int(S * long / short) in float64 (as Python computes it), crop corner
round((size - crop) / 2) half to even (ONNX Round does the same). The resample is onnxruntime's
cubic Resize with antialias (a = -0.5, PIL's kernel), close to PIL's fixed-point bicubic but not
identical, so such artifacts are gated against the exact PIL reference (docs/metrics.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.errors import ClipExportError, ConversionError
from clip_export.core.models import PreprocessConfig
from clip_export.core.spec import (
    PREPROCESSING_GRAPH_MAX_PIXELS,
    PREPROCESSING_GRAPH_MODES,
    PREPROCESSING_MIN_OPSET,
    RAW_IMAGE_INPUT,
    RAW_IMAGE_SHAPE,
    TOWERS,
)

PREFIX = "clip_export_preprocess/"
_RESAMPLE = {"bicubic": "cubic", "bilinear": "linear"}


def _check_config(config: PreprocessConfig) -> tuple[int, int]:
    if config.resize_mode not in PREPROCESSING_GRAPH_MODES:
        raise ClipExportError(
            f"resize_mode {config.resize_mode!r} has no preprocessing graph; the graph implements {', '.join(PREPROCESSING_GRAPH_MODES)}"
        )
    if config.interpolation not in _RESAMPLE:
        raise ClipExportError(
            f"interpolation {config.interpolation!r} has no preprocessing graph; it implements {', '.join(_RESAMPLE)}"
        )
    height, width = (int(v) for v in config.image_size)
    if config.resize_mode == "shortest" and height != width:
        raise ClipExportError(
            f"a {height}x{width} crop after a shortest-side resize needs padding, which the preprocessing "
            "graph does not implement"
        )
    return height, width


def preprocessing_nodes(config: PreprocessConfig, output: str = "pixel_values") -> tuple[list[Any], list[Any]]:
    """(nodes, initializers) mapping RAW_IMAGE_INPUT [H, W, 3] uint8 to `output` [1, 3, h, w] float32."""
    from onnx import TensorProto, helper, numpy_helper

    height, width = _check_config(config)
    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, value: Any, dtype: Any = np.int64) -> str:
        if any(t.name == PREFIX + name for t in inits):
            return PREFIX + name
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), PREFIX + name))
        return PREFIX + name

    def node(op: str, inputs: Sequence[str], name: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, list(inputs), [PREFIX + name], name=PREFIX + name, **attrs))
        return PREFIX + name

    shape = node("Shape", [RAW_IMAGE_INPUT], "shape")
    hw = node("Slice", [shape, const("0", [0]), const("2", [2])], "hw")  # [H, W] int64
    # An image over the pixel limit is refused here, before the float copies: its shape becomes an
    # impossible Reshape target, so onnxruntime fails in a node whose name says why.
    h = node("Slice", [hw, const("0", [0]), const("1", [1])], "h")
    w = node("Slice", [hw, const("1", [1]), const("2", [2])], "w")
    area = node("Mul", [h, w], "area")  # ops the rest of the graph uses too (every client runtime has them)
    within = node("LessOrEqual", [area, const("max_pixels", [PREPROCESSING_GRAPH_MAX_PIXELS])], "within_limit")
    target = node("Where", [within, shape, const("refused", [-1, -1, 3])], "guarded_shape")
    image = node("Reshape", [RAW_IMAGE_INPUT, target], f"refuse_images_over_{PREPROCESSING_GRAPH_MAX_PIXELS}_pixels")
    # Resampled as float NCHW: onnxruntime's fastest antialias path (uint8 NHWC measured 1.5-2x slower).
    nchw = node(
        "Transpose",
        [
            node(
                "Cast",
                [node("Unsqueeze", [image, const("batch_axis", [0])], "nhwc")],
                "nhwc_f",
                to=TensorProto.FLOAT,
            )
        ],
        "nchw",
        perm=[0, 3, 1, 2],
    )
    if config.resize_mode == "squash":
        resized = _resample(node, nchw, const("squash_sizes", [1, 3, height, width]), const, config)
        cropped = resized
    else:
        size = height
        short = node("Min", [h, w], "short")
        long = node("Max", [h, w], "long")
        # int(size * long / short): the product is exact in int64, the quotient one IEEE division in float64, as in Python.
        scaled = node(
            "Cast",
            [node("Mul", [long, const("size", [size])], "size_times_long")],
            "size_times_long_f64",
            to=TensorProto.DOUBLE,
        )
        quotient = node("Div", [scaled, node("Cast", [short], "short_f64", to=TensorProto.DOUBLE)], "quotient")
        new_long = node("Cast", [node("Floor", [quotient], "floor")], "new_long", to=TensorProto.INT64)
        portrait = node("LessOrEqual", [w, h], "portrait")  # w <= h: the width is the short side
        new_h = node("Where", [portrait, new_long, const("size_h", [size])], "new_h")
        new_w = node("Where", [portrait, const("size_w", [size]), new_long], "new_w")
        sizes = node("Concat", [new_h, new_w], "sizes", axis=0)
        full_sizes = node("Concat", [const("1", [1]), const("3", [3]), sizes], "full_sizes", axis=0)
        resized = _resample(node, nchw, full_sizes, const, config)
        # torchvision's CenterCrop corner: round((new - crop) / 2), half to even, which ONNX Round also does.
        margin = node(
            "Cast", [node("Sub", [sizes, const("crop", [height, width])], "margin")], "margin_f", to=TensorProto.FLOAT
        )
        corner = node(
            "Cast",
            [node("Round", [node("Div", [margin, const("two", [2.0, 2.0], np.float32)], "half_margin")], "corner_f")],
            "corner",
            to=TensorProto.INT64,
        )
        end = node("Add", [corner, const("crop_size", [height, width])], "end")
        cropped = node("Slice", [resized, corner, end, const("axes", [2, 3])], "cropped")
    # ToTensor then Normalize with torchvision's float32 operations: x * (1/255), minus mean, over std.
    scaled_pixels = node("Mul", [cropped, const("inv255", np.float32(1.0 / 255.0), np.float32)], "unit")
    centred = node("Sub", [scaled_pixels, const("mean", np.reshape(config.mean, (3, 1, 1)), np.float32)], "centred")
    nodes.append(
        helper.make_node(
            "Div",
            [centred, const("std", np.reshape(config.std, (3, 1, 1)), np.float32)],
            [output],
            name=PREFIX + "normalised",
        )
    )
    return nodes, inits


def _resample(node: Any, image: str, sizes: str, const: Any, config: PreprocessConfig) -> str:
    """One float Resize, rounded and clamped to uint8 values as PIL's output is. PIL rounds between
    its horizontal and vertical passes too; two Resize nodes doing that matched PIL to the last step
    but lost the speed (docs/benchmarks.md), so the graph differs by up to 2 uint8 steps and is gated."""
    resized = node("Resize", [image, "", "", sizes], "resized", **_resize_attrs(config))
    return node(
        "Clip",
        [
            node("Round", [resized], "rounded"),
            const("zero", np.float32(0.0), np.float32),
            const("max255", np.float32(255.0), np.float32),
        ],
        "clamped",
    )


def _resize_attrs(config: PreprocessConfig) -> dict[str, Any]:
    """PIL's filters: Keys' cubic with a = -0.5 (or the triangle), widened by the scale when
    shrinking (antialias), taps outside the image dropped and the rest renormalised, pixel centres
    at half-integers."""
    attrs: dict[str, Any] = {
        "mode": _RESAMPLE[config.interpolation],
        "antialias": 1,
        "exclude_outside": 1,
        "coordinate_transformation_mode": "half_pixel",
    }
    if attrs["mode"] == "cubic":
        attrs["cubic_coeff_a"] = -0.5
    return attrs


def preprocessing_model(config: PreprocessConfig, opset: int = PREPROCESSING_MIN_OPSET) -> Any:
    """The preprocessing alone as a model (image_uint8 → pixel_values), for tests and benchmarks."""
    from onnx import TensorProto, helper

    nodes, inits = preprocessing_nodes(config)
    graph = helper.make_graph(
        nodes,
        "clip_export_preprocess",
        [_raw_input()],
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, *config.image_size])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", max(opset, PREPROCESSING_MIN_OPSET))])


def _raw_input() -> Any:
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(RAW_IMAGE_INPUT, TensorProto.UINT8, list(RAW_IMAGE_SHAPE))


def with_preprocessing(model: Any, config: PreprocessConfig) -> Any:
    """The visual tower `model` (any precision) with the preprocessing spliced in front of its
    `pixel_values` input, in place; the output keeps its name and float32 type."""
    pixel_name = TOWERS["visual"].input_name
    graph = model.graph
    if [i.name for i in graph.input] != [pixel_name]:
        raise ConversionError(f"the visual graph's inputs are {[i.name for i in graph.input]}, expected [{pixel_name}]")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < PREPROCESSING_MIN_OPSET:
        raise ConversionError(
            f"the visual graph uses opset {opset}; the preprocessing graph needs {PREPROCESSING_MIN_OPSET} "
            f"or newer (Resize with antialias): re-export with --opset {PREPROCESSING_MIN_OPSET} or newer"
        )
    nodes, inits = preprocessing_nodes(config, output=pixel_name)
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    graph.initializer.extend(inits)
    del graph.input[:]
    graph.input.append(_raw_input())
    graph.output[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    props = {p.key: p for p in model.metadata_props}
    entry = props.get("clip_export.preprocessing") or model.metadata_props.add()
    entry.key, entry.value = (
        "clip_export.preprocessing",
        f"in graph: {config.resize_mode} resize ({config.interpolation}, antialias), crop {config.image_size[0]}x{config.image_size[1]}, "
        f"mean {list(config.mean)}, std {list(config.std)}",
    )
    return model


def rgb_uint8(item: Any) -> np.ndarray:
    """What a client hands the graph: the image decoded, alpha dropped, as contiguous [H, W, 3] uint8.
    Paths, bytes, PIL images and arrays all go through load_image, so bad input gets its errors."""
    from clip_export.core.preprocess import load_image

    return np.ascontiguousarray(np.asarray(load_image(item).convert("RGB"), dtype=np.uint8))


def run_raw(session: Any, images: Sequence[np.ndarray]) -> np.ndarray:
    """[N, D] embeddings, one session run per image (the graph takes one image of any size)."""
    return np.concatenate([session.run(None, {RAW_IMAGE_INPUT: image})[0] for image in images])


def structure_problems(session: Any) -> list[str]:
    """The declared raw-image input: uint8, any height and width, three channels."""
    got = session.get_inputs()[0]
    problems = []
    if got.name != RAW_IMAGE_INPUT or got.type != "tensor(uint8)":
        problems.append(f"input is {got.name} {got.type}, declared {RAW_IMAGE_INPUT} uint8")
    if len(got.shape) != 3 or got.shape[2] != 3 or any(isinstance(d, int) for d in got.shape[:2]):
        problems.append(f"input shape is {got.shape}, declared {list(RAW_IMAGE_SHAPE)} with free height and width")
    out = session.get_outputs()[0]
    if out.name != TOWERS["visual"].output_name or out.type != "tensor(float)":
        problems.append(f"output is {out.name} {out.type}, declared {TOWERS['visual'].output_name} float32")
    return problems


def load_rgb_images(paths: Sequence[Path]) -> list[np.ndarray]:
    return [rgb_uint8(p) for p in paths]
