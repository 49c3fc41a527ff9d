"""The vectorised resize must give PIL's pixels bit for bit, or hand the image to PIL."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clip_export.core import resample
from clip_export.core.evalset import load_evalset
from clip_export.core.models import PreprocessConfig
from clip_export.core.preprocess import preprocess_fast, preprocess_reference

OPENAI = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def _random_image(rng: np.random.Generator, mode: str, size: tuple[int, int]) -> Image.Image:
    width, height = size
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8), "L")
    pixels = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    if mode == "RGBA":  # every alpha level, including fully transparent and opaque runs
        pixels[: height // 3, :, 3] = 255
        pixels[height // 3 : height // 2, :, 3] = 0
    return Image.fromarray(pixels, "RGBA").convert(mode) if mode != "RGBA" else Image.fromarray(pixels, "RGBA")


# (width, height): downscales wide and tall, an upscale, one side already at the target (PIL
# skips that pass), odd sizes, a steep reduction, and tall images whose height shrinks by more
# than twice the width's pixels (Pillow 13 then runs the vertical pass first).
GEOMETRIES = [
    (2162, 762),
    (427, 640),
    (150, 300),
    (224, 500),
    (700, 224),
    (333, 229),
    (4000, 260),
    (225, 225),
    (96, 96),
    (300, 1000),
    (260, 700),
]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_fast_preprocessing_is_bit_identical_to_pils(mode: str, interpolation: str) -> None:
    rng = np.random.default_rng(0)
    for image_size in ((224, 224), (64, 64), (256, 224)):
        config = PreprocessConfig(image_size, *OPENAI, interpolation=interpolation)
        for size in GEOMETRIES:
            image = _random_image(rng, mode, size)
            assert resample.covers(image, config)
            expected = preprocess_reference(image, config)
            got = preprocess_fast(image, config)
            assert got.dtype == np.float32 and got.shape == expected.shape
            assert np.array_equal(got, expected), f"{mode} {size} -> {image_size} {interpolation}"


def test_fast_preprocessing_matches_on_the_bundled_images() -> None:
    config = PreprocessConfig((224, 224), *OPENAI)
    for image in load_evalset().open_images():
        assert np.array_equal(preprocess_fast(image, config), preprocess_reference(image, config)), image.info


def test_a_lazy_image_is_decoded_by_the_fast_path() -> None:
    from clip_export.stages.bench.preprocessing_study import report_images

    config = PreprocessConfig((224, 224), *OPENAI)
    for path in report_images():
        with Image.open(path) as lazy:
            got = preprocess_fast(lazy, config)
        with Image.open(path) as image:
            assert np.array_equal(got, preprocess_reference(image, config))


def test_threads_and_the_copying_reader_give_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Scratch buffers are per thread; crop() + tobytes() is the reader for a Pillow that cannot paste into numpy."""
    from concurrent.futures import ThreadPoolExecutor

    config = PreprocessConfig((224, 224), *OPENAI)
    rng = np.random.default_rng(4)
    images = [
        _random_image(rng, mode, size)
        for mode in ("RGB", "RGBA", "L")
        for size in ((2162, 762), (427, 640), (300, 1000))
    ]
    expected = [preprocess_reference(image, config) for image in images]
    with ThreadPoolExecutor(max_workers=3) as pool:
        for _ in range(3):
            for got, want in zip(pool.map(lambda image: preprocess_fast(image, config), images), expected):
                assert np.array_equal(got, want)
    assert resample.region_reader() is resample._paste_region
    monkeypatch.setattr(resample, "region_reader", lambda: resample._copy_region)
    for image, want in zip(images, expected):
        assert np.array_equal(preprocess_fast(image, config), want)


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "I;16", "1"])
def test_modes_the_kernels_do_not_cover_go_through_pil(mode: str) -> None:
    config = PreprocessConfig((224, 224), *OPENAI)
    image = _random_image(np.random.default_rng(1), "RGB", (500, 300)).convert(mode)
    assert not resample.covers(image, config)
    try:
        expected = preprocess_reference(image, config)
    except ValueError as exc:  # Pillow 10 cannot resize I;16 with a bicubic filter (12 and 13 can)
        with pytest.raises(ValueError, match=str(exc)):
            preprocess_fast(image, config)
        return
    assert np.array_equal(preprocess_fast(image, config), expected)


def test_an_unknown_pillow_pass_order_sends_every_image_through_pil(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resample.pillow_pass_order() is not None, "the installed Pillow orders its passes by neither known rule"
    monkeypatch.setattr(resample, "pillow_pass_order", lambda: None)
    config = PreprocessConfig((224, 224), *OPENAI)
    image = _random_image(np.random.default_rng(3), "RGB", (500, 300))
    assert not resample.covers(image, config)
    assert np.array_equal(preprocess_fast(image, config), preprocess_reference(image, config))


def test_other_filters_go_through_pil() -> None:
    config = PreprocessConfig((224, 224), *OPENAI, interpolation="lanczos")
    image = _random_image(np.random.default_rng(2), "RGB", (500, 300))
    assert not resample.covers(image, config)
    assert np.array_equal(preprocess_fast(image, config), preprocess_reference(image, config))


def test_premultiplying_matches_the_installed_pillow_for_every_value_and_alpha() -> None:
    """The kernel premultiplies arithmetically; alpha_tables() holds Pillow's own answers."""
    tables = resample.alpha_tables()
    assert tables is not None, "this Pillow premultiplies differently; RGBA would take PIL's path"
    grid = np.zeros((256, 256), np.uint32)
    values = np.arange(256, dtype=np.uint32)
    grid[:] = values[None, :] | (values[None, :] << 8) | (values[None, :] << 16) | (values[:, None] << 24)
    resample._premultiply_words(grid)
    assert np.array_equal((grid & 255).astype(np.uint8), tables[0])
    assert np.array_equal(
        (grid >> 24).astype(np.uint8), np.repeat(np.arange(256, dtype=np.uint8)[:, None], 256, axis=1)
    )


def test_filter_weights_sum_to_one_in_fixed_point() -> None:
    weights, bounds = resample.filter_weights(2162, 635, "bicubic")
    assert weights.shape == (635, 2 * 7 + 1) and not weights.flags.writeable
    sums = weights.sum(axis=1)
    assert np.all(np.abs(sums - (1 << resample.PRECISION_BITS)) <= weights.shape[1])
    assert bounds[0, 0] == 0 and bounds[-1, 0] + bounds[-1, 1] == 2162
