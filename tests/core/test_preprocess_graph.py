"""The preprocessing graph against PIL's exact pipeline: size rule, crop, pixels, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from clip_export.core.errors import ClipExportError, ConversionError
from clip_export.core.evalset import load_evalset
from clip_export.core.models import PreprocessConfig
from clip_export.core.preprocess import _crop_offsets, load_image, preprocess_reference, shortest_side_size
from clip_export.core.preprocess_graph import PREFIX, preprocessing_model, rgb_uint8, with_preprocessing
from clip_export.core.spec import PREPROCESSING_GRAPH_MAX_PIXELS, RAW_IMAGE_INPUT

CONFIG = PreprocessConfig((224, 224), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
ONE_STEP = 1.0 / 255.0 / min(CONFIG.std)  # one uint8 step in normalised units


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def pixels(s: ort.InferenceSession, image: np.ndarray) -> np.ndarray:
    return s.run(None, {RAW_IMAGE_INPUT: image})[0][0]


@pytest.fixture(scope="module")
def graph() -> ort.InferenceSession:
    return session(preprocessing_model(CONFIG))


def test_evalset_pixels_close_to_pil(graph: ort.InferenceSession) -> None:
    """Opaque photos (RGB and grey): PIL rounds and clamps between its two passes, onnxruntime's one float
    pass does not; on average a fraction of a uint8 step, up to 13 steps on a few overshooting edges."""
    for path in load_evalset().image_paths:
        image = load_image(path)
        if image.mode == "RGBA":
            continue  # PIL resamples RGBA premultiplied; docs/metrics.md measures what that costs
        got, ref = pixels(graph, rgb_uint8(path)), preprocess_reference(image, CONFIG)
        assert got.shape == ref.shape == (3, 224, 224)
        assert np.abs(got - ref).max() <= 16 * ONE_STEP, path.name
        assert np.abs(got - ref).mean() < 3e-3, path.name


def test_size_rule_and_crop_corner_match_torchvision() -> None:
    """The sizes and the crop corner computed in the graph from the input shape, for awkward shapes."""
    model = preprocessing_model(CONFIG)
    for name in ("sizes", "corner"):
        model.graph.output.append(onnx.helper.make_tensor_value_info(PREFIX + name, onnx.TensorProto.INT64, [2]))
    s = session(model)
    shapes = [
        (1, 1),
        (224, 224),
        (225, 224),
        (5, 1000),
        (1000, 5),
        (762, 2162),
        (427, 640),
        (3, 7),
        (299, 301),
        (300, 301),
        (10000, 3),
    ]
    for height, width in shapes:
        _, sizes, corner = s.run(None, {RAW_IMAGE_INPUT: np.zeros((height, width, 3), np.uint8)})
        new_w, new_h = shortest_side_size(width, height, 224)
        assert sizes.tolist() == [new_h, new_w], (height, width)
        left, top = _crop_offsets(new_w, new_h, 224, 224)
        assert corner.tolist() == [top, left], (height, width)


def test_odd_sizes_match_pil(graph: ort.InferenceSession) -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 1, 3), (224, 224, 3), (5, 1000, 3), (1000, 5, 3), (225, 301, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        delta = np.abs(pixels(graph, image) - preprocess_reference(Image.fromarray(image), CONFIG))
        assert delta.max() <= 32 * ONE_STEP and delta.mean() < 5e-3, shape  # noise: every pixel an overshooting edge


def test_squash_resizes_to_the_exact_size(graph: ort.InferenceSession) -> None:
    config = dataclasses.replace(CONFIG, image_size=(64, 96), resize_mode="squash")
    s = session(preprocessing_model(config))
    image = np.asarray(Image.open(load_evalset().image_paths[0]).convert("RGB"))
    expected = np.asarray(Image.fromarray(image).resize((96, 64), Image.BICUBIC), dtype=np.float32) / 255.0
    expected = ((expected - np.asarray(CONFIG.mean, np.float32)) / np.asarray(CONFIG.std, np.float32)).transpose(
        2, 0, 1
    )
    got = pixels(s, image)
    assert (
        got.shape == (3, 64, 96)
        and np.abs(got - expected).mean() < 3e-3
        and np.abs(got - expected).max() <= 16 * ONE_STEP
    )


@pytest.mark.parametrize(
    "change, message",
    [
        ({"resize_mode": "longest"}, "resize_mode 'longest'"),
        ({"interpolation": "lanczos"}, "interpolation 'lanczos'"),
        ({"image_size": (224, 192)}, "needs padding"),
    ],
)
def test_refuses_what_it_does_not_implement(change: dict, message: str) -> None:
    with pytest.raises(ClipExportError, match=message):
        preprocessing_model(dataclasses.replace(CONFIG, **change))


def test_bad_input_to_the_graph_is_refused_by_onnxruntime(graph: ort.InferenceSession) -> None:
    """The documented behaviour (docs/reliability.md): onnxruntime refuses, naming the input."""
    for bad, message in [
        (np.zeros((8, 8, 4), np.uint8), "index: 2 Got: 4 Expected: 3"),
        (np.zeros((8, 8), np.uint8), "Invalid rank"),
        (np.zeros((8, 8, 3), np.float32), "expected: \\(tensor\\(uint8\\)\\)"),
        (np.zeros((0, 8, 3), np.uint8), "Input dim is zero"),
    ]:
        with pytest.raises(Exception, match=message):
            graph.run(None, {RAW_IMAGE_INPUT: bad})


def test_an_image_over_the_pixel_limit_is_refused_before_any_float_copy() -> None:
    """Each size in a fresh process, whose peak RSS is its own: np.zeros is not backed by memory until
    written, so a refusal before the graph's Cast keeps the peak where a small image leaves it; running
    the huge image would add gigabytes."""
    import subprocess
    import sys

    def peak_mb(side: int) -> tuple[str, int]:
        child = f"""
import resource, numpy as np
from clip_export.core.models import PreprocessConfig
from clip_export.core.preprocess_graph import preprocessing_model
from clip_export.core.sessions import create_session
graph = create_session(preprocessing_model(PreprocessConfig((224, 224), (0.5,) * 3, (0.5,) * 3)).SerializeToString())
try:
    graph.run(None, {{"{RAW_IMAGE_INPUT}": np.zeros(({side}, {side}, 3), np.uint8)}})
    print("ran")
except Exception as exc:
    print("refused" if "refuse_images_over_{PREPROCESSING_GRAPH_MAX_PIXELS}_pixels" in str(exc) else exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""
        done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=300, check=True)
        outcome, peak = done.stdout.split()
        return outcome, int(peak)

    small, small_peak = peak_mb(300)
    huge, huge_peak = peak_mb(int(PREPROCESSING_GRAPH_MAX_PIXELS**0.5) + 1)
    assert small == "ran" and huge == "refused"
    assert huge_peak - small_peak < 100, f"the refused image raised the peak from {small_peak} to {huge_peak} MB"


def test_rgb_uint8_gives_clear_errors() -> None:
    assert rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)  # grey: replicated, as convert("RGB") does
    assert rgb_uint8(np.zeros((4, 5, 4), np.uint8)).shape == (4, 5, 3)  # RGBA: alpha dropped
    with pytest.raises(ClipExportError, match="nothing to embed"):
        rgb_uint8(np.zeros((0, 5, 3), np.uint8))
    with pytest.raises(ClipExportError, match="not an image"):
        rgb_uint8(np.zeros((4, 5, 3), np.float32))


def test_splice_refuses_an_old_opset_and_a_foreign_graph() -> None:
    model = preprocessing_model(CONFIG)
    with pytest.raises(ConversionError, match="expected \\[pixel_values\\]"):
        with_preprocessing(model, CONFIG)
    identity = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["pixel_values"], ["image_embeds"])],
            "g",
            [onnx.helper.make_tensor_value_info("pixel_values", onnx.TensorProto.FLOAT, ["batch", 3, 224, 224])],
            [onnx.helper.make_tensor_value_info("image_embeds", onnx.TensorProto.FLOAT, ["batch", 3, 224, 224])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    with pytest.raises(ConversionError, match="opset 17"):
        with_preprocessing(identity, CONFIG)
