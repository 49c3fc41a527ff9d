"""Pillow's antialiased resize, computed only where the centre crop keeps it, in vectorised kernels.

Why: PIL resamples the whole image one pixel and one channel at a time, and open_clip then crops
away most of a wide image. Here the same fixed-point arithmetic as Pillow's `ImagingResample`
(filter weights in double precision, rounded to 22-bit integers, int32 sums, uint8 between the
horizontal and the vertical pass) runs as loops over whole contiguous rows, which the compiler
vectorises, and only for the output pixels that survive the crop. Integer sums do not depend on
their order, so the pixels are bit-identical to `image.resize(...)` followed by the crop; the
tests compare them with Pillow on every covered mode, filter and geometry.

What could differ between Pillow versions is checked against the installed Pillow at first use:
the order of the two passes and the rounding of premultiplied alpha (unpremultiplying goes through
a table that Pillow itself fills), and whether it pastes correctly into numpy's memory. Modes,
filters, geometries and Pillows outside `covers()` go through PIL's own code
(clip_export.core.preprocess.preprocess_reference).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from functools import lru_cache

import numpy as np
from numba import njit
from PIL import Image

from clip_export.core.configs import PreprocessConfig

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
_CHUNK_BYTES = 4096  # row bytes per chunk: 16 KB of int32 sums, well inside a 32-48 KB L1 cache
_STRIP_ROWS = 32  # rows per strip when transposing
# PIL's filter half-widths at scale 1; the window grows with the downscale factor.
FILTER_SUPPORT = {"bilinear": 1.0, "bicubic": 2.0}
_FILTER_CODES = {"bilinear": 0, "bicubic": 1}


def covers(image: Image.Image, config: PreprocessConfig) -> bool:
    """Whether crop_resize_normalise reproduces PIL for this image (else use PIL's own resize)."""
    if (
        image.mode not in _RAW
        or config.interpolation not in FILTER_SUPPORT
        or config.resize_mode not in ("shortest", "squash")
    ):
        return False
    if pillow_pass_order() is None:
        return False
    return image.mode != "RGBA" or alpha_tables() is not None


@njit(nogil=True, cache=True)
def _filter(code: int, x: float) -> float:
    if x < 0.0:
        x = -x
    if code == 0:  # bilinear (triangle)
        return 1.0 - x if x < 1.0 else 0.0
    a = -0.5  # Pillow's bicubic
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@njit(nogil=True, cache=True)
def _pillow_weights(
    in_size: int, out_size: int, code: int, support_at_1: float, weights: np.ndarray, bounds: np.ndarray
) -> None:
    """Pillow's precompute_coeffs and normalize_coeffs_8bpc for the box (0, in_size), operation
    for operation in double precision, so every rounded weight is Pillow's."""
    scale = in_size / out_size
    filterscale = scale if scale > 1.0 else 1.0
    support = support_at_1 * filterscale
    inverse = 1.0 / filterscale
    one = 1 << PRECISION_BITS
    row = np.empty(weights.shape[1], np.float64)
    for out in range(out_size):
        center = (out + 0.5) * scale
        first = int(center - support + 0.5)
        if first < 0:
            first = 0
        last = int(center + support + 0.5)
        if last > in_size:
            last = in_size
        taps = last - first
        total = 0.0
        for tap in range(taps):
            w = _filter(code, (tap + first - center + 0.5) * inverse)
            row[tap] = w
            total += w
        for tap in range(weights.shape[1]):
            w = row[tap] / total if tap < taps and total != 0.0 else (row[tap] if tap < taps else 0.0)
            weights[out, tap] = int(-0.5 + w * one) if w < 0 else int(0.5 + w * one)
        bounds[out, 0] = first
        bounds[out, 1] = taps


@lru_cache(maxsize=64)
def filter_weights(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """int32 weights [out_size, taps] and bounds [out_size, (first source index, taps)]."""
    support_at_1 = FILTER_SUPPORT[interpolation]
    support = support_at_1 * max(in_size / out_size, 1.0)
    weights = np.zeros((out_size, int(math.ceil(support)) * 2 + 1), np.int32)
    bounds = np.zeros((out_size, 2), np.int32)
    _pillow_weights(in_size, out_size, _FILTER_CODES[interpolation], support_at_1, weights, bounds)
    weights.setflags(write=False)
    bounds.setflags(write=False)
    return weights, bounds


@njit(nogil=True, cache=True)
def _convolve_rows(source: np.ndarray, weights: np.ndarray, bounds: np.ndarray, out: np.ndarray) -> None:
    """out[o] = clip8(sum over taps of weight * source[first + tap]), whole rows at a time, in
    column chunks whose int32 sums stay in the L1 cache however wide the rows are."""
    width = source.shape[1]
    chunk = min(width, _CHUNK_BYTES)
    acc = np.empty(chunk, np.int32)
    half = np.int32(1 << (PRECISION_BITS - 1))
    for start in range(0, width, chunk):
        stop = min(start + chunk, width)
        for o in range(weights.shape[0]):
            first = bounds[o, 0]
            acc[: stop - start] = half
            for tap in range(bounds[o, 1]):
                weight = weights[o, tap]
                row = source[first + tap, start:stop]
                for i in range(stop - start):
                    acc[i] += np.int32(row[i]) * weight
            dest = out[o, start:stop]
            for i in range(stop - start):
                value = acc[i] >> PRECISION_BITS
                dest[i] = 0 if value < 0 else (255 if value > 255 else value)


_thread_scratch = threading.local()
_SCRATCH_LIMIT = 32 << 20  # bytes a thread keeps per buffer; larger requests get fresh memory


def _scratch(slot: str, shape: tuple[int, int], dtype: type) -> np.ndarray:
    """An uninitialised array in this thread's reusable memory for `slot`. Fresh memory costs a page
    fault per 4 KB on first touch (about 1 ms for the report PNG's 2.4 MB crop, as much as the
    resampling); intermediates reused call after call skip that."""
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    if nbytes > _SCRATCH_LIMIT:
        return np.empty(shape, dtype)
    buffers = _thread_scratch.__dict__.setdefault("buffers", {})
    buffer = buffers.get(slot)
    if buffer is None or buffer.size < nbytes:
        buffer = buffers[slot] = np.empty(nbytes, np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def _copy_region(image: Image.Image, box: tuple[int, int, int, int], rawmode: str, word: type) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.frombuffer(image.crop(box).tobytes("raw", rawmode), word).reshape(y1 - y0, x1 - x0).copy()


def _paste_region(image: Image.Image, box: tuple[int, int, int, int], rawmode: str, word: type) -> np.ndarray:
    """The region in one copy: Pillow maps a numpy buffer as an image and pastes into it, where
    crop() + tobytes() copy twice and join the encoder's chunks (52 ms against 5 ms for a
    12-megapixel crop)."""
    x0, y0, x1, y1 = box
    words = _scratch("region", (y1 - y0, x1 - x0), word)
    target = Image.frombuffer(rawmode, (x1 - x0, y1 - y0), words, "raw", rawmode, 0, 1)
    image.load()
    target.im.paste(image.im, (-x0, -y0, image.width - x0, image.height - y0))
    return words


@lru_cache(maxsize=1)
def region_reader() -> Callable[[Image.Image, tuple[int, int, int, int], str, type], np.ndarray]:
    """_paste_region where the installed Pillow gives the same words as crop() + tobytes() on
    small probes of every covered mode, else _copy_region."""
    rng = np.random.default_rng(0)
    rgba = Image.fromarray(rng.integers(0, 256, (37, 53, 4), dtype=np.uint8), "RGBA")
    box = (5, 3, 41, 30)
    try:
        for mode, (rawmode, word, _) in _RAW.items():
            probe = rgba.convert(mode)
            if not np.array_equal(_paste_region(probe, box, rawmode, word), _copy_region(probe, box, rawmode, word)):
                return _copy_region
    except (ValueError, TypeError, AttributeError):  # a Pillow without mapped buffers or core paste
        return _copy_region
    return _paste_region


def _transposed(words: np.ndarray, slot: str) -> np.ndarray:
    """words.T as a C-contiguous array, copied a strip of rows at a time: numpy's copy of a whole
    large transposed image misses the cache on nearly every element (58 ms against 16 ms for a
    12-megapixel photo's crop)."""
    out = _scratch(slot, (words.shape[1], words.shape[0]), words.dtype)
    for row0 in range(0, words.shape[0], _STRIP_ROWS):
        out[:, row0 : row0 + _STRIP_ROWS] = words[row0 : row0 + _STRIP_ROWS].T
    return out


@njit(nogil=True, cache=True)
def _premultiply_words(words: np.ndarray) -> None:
    """RGBA words (little-endian R, G, B, A bytes) to Pillow's RGBa in place, lane by lane:
    value * alpha / 255 rounded the way Pillow's MULDIV255 rounds (alpha_tables() checks it)."""
    flat = words.reshape(-1)
    mask, rounding = np.uint32(255), np.uint32(128)
    for i in range(flat.size):
        word = flat[i]
        alpha = word >> np.uint32(24)
        red = (word & mask) * alpha + rounding
        green = ((word >> np.uint32(8)) & mask) * alpha + rounding
        blue = ((word >> np.uint32(16)) & mask) * alpha + rounding
        red = ((red >> np.uint32(8)) + red) >> np.uint32(8)
        green = ((green >> np.uint32(8)) + green) >> np.uint32(8)
        blue = ((blue >> np.uint32(8)) + blue) >> np.uint32(8)
        flat[i] = red | (green << np.uint32(8)) | (blue << np.uint32(16)) | (alpha << np.uint32(24))


@njit(nogil=True, cache=True)
def _normalise(pixels: np.ndarray, unpremultiply: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    """uint8 [h, w, c] (RGBa, RGBX or L) -> ToTensor + Normalize as [3, h, w] float32, via the
    lookup table that preprocess._normalization_table proves bit-identical to torchvision."""
    h, w, c = pixels.shape
    alpha = unpremultiply.shape[0] > 0
    for y in range(h):
        for x in range(w):
            for ch in range(3):
                value = pixels[y, x, ch if c > 1 else 0]
                if alpha:
                    value = unpremultiply[pixels[y, x, 3], value]
                out[ch, y, x] = table[ch, value]


def _muldiv255(value: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    product = value.astype(np.uint32) * alpha + 128
    return (((product >> 8) + product) >> 8).astype(np.uint8)


@lru_cache(maxsize=1)
def alpha_tables() -> tuple[np.ndarray, np.ndarray] | None:
    """[alpha, value] -> Pillow's premultiplied value, and back, filled by Pillow's own converters;
    None when the installed Pillow premultiplies differently from _premultiply_words."""
    grid = np.zeros((256, 256, 4), np.uint8)
    grid[..., 0] = np.arange(256, dtype=np.uint8)[None, :]
    grid[..., 3] = np.arange(256, dtype=np.uint8)[:, None]
    premultiply = np.asarray(Image.fromarray(grid, "RGBA").convert("RGBa"))[..., 0]
    unpremultiply = np.ascontiguousarray(
        np.asarray(Image.frombytes("RGBa", (256, 256), grid.tobytes()).convert("RGBA"))[..., 0]
    )
    if not np.array_equal(premultiply, _muldiv255(grid[..., 0], grid[..., 3].astype(np.uint32))):
        return None
    return premultiply, unpremultiply


_NO_TABLE = np.zeros((0, 0), np.uint8)
# How each covered mode's bytes are read: Pillow keeps RGB as 4 bytes a pixel, so RGBX is a plain copy.
_RAW = {"L": ("L", np.uint8, 1), "RGB": ("RGBX", np.uint32, 4), "RGBA": ("RGBA", np.uint32, 4)}


def _vertical_first_pillow_13(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Pillow 13's ImagingResampleInner: the vertical pass goes first when the height shrinks by
    more than twice as many pixels as the width does."""
    return in_h - out_h > 0 and in_h - out_h > 2 * (in_w - out_w)


def _horizontal_first_always(in_w: int, in_h: int, out_w: int, out_h: int) -> bool:
    """Pillow up to 12: always the horizontal pass first."""
    return False


# Geometries (in_w, in_h, out_w, out_h) on both sides of the rules' boundaries.
_ORDER_PROBES = [(224, 500, 64, 142), (224, 481, 64, 160), (224, 480, 64, 160), (427, 640, 64, 95), (500, 224, 142, 64)]


@lru_cache(maxsize=1)
def pillow_pass_order() -> Callable[[int, int, int, int], bool] | None:
    """Which of the known rules the installed Pillow follows to order its two passes (the uint8
    rounding between them makes the order visible), found by resizing small probes; None if neither."""
    rng = np.random.default_rng(0)
    observed = []
    for in_w, in_h, out_w, out_h in _ORDER_PROBES:
        image = Image.fromarray(rng.integers(0, 256, (in_h, in_w), dtype=np.uint8), "L")
        both = np.asarray(image.resize((out_w, out_h), Image.BICUBIC))
        vertical_first = np.asarray(image.resize((in_w, out_h), Image.BICUBIC).resize((out_w, out_h), Image.BICUBIC))
        horizontal_first = np.asarray(image.resize((out_w, in_h), Image.BICUBIC).resize((out_w, out_h), Image.BICUBIC))
        if np.array_equal(both, vertical_first) == np.array_equal(both, horizontal_first):
            return None
        observed.append(np.array_equal(both, vertical_first))
    for rule in (_vertical_first_pillow_13, _horizontal_first_always):
        if [rule(*probe) for probe in _ORDER_PROBES] == observed:
            return rule
    return None


def crop_resize_normalise(
    image: Image.Image,
    new_size: tuple[int, int],
    crop: tuple[int, int, int, int],
    interpolation: str,
    table: np.ndarray,
) -> np.ndarray:
    """[3, crop height, crop width] float32 equal to normalising
    image.resize(new_size, filter).crop(crop).convert("RGB"), for an image that covers() accepts.

    Each pass computes only the output rows or columns inside the crop, from the source pixels
    their filter windows reach; the passes run in the order the installed Pillow uses."""
    new_w, new_h = new_size
    left, top, right, bottom = crop
    width, height = right - left, bottom - top
    img_w, img_h = image.size
    need_horizontal, need_vertical = new_w != img_w, new_h != img_h  # Pillow skips a pass at scale 1
    x0, x1, y0, y1 = left, right, top, bottom
    if need_horizontal:
        weights_x, bounds_x = _window(img_w, new_w, left, right, interpolation)
        x0, x1 = int(bounds_x[0, 0]), int(bounds_x[-1, 0] + bounds_x[-1, 1])
        bounds_x[:, 0] -= x0
    if need_vertical:
        weights_y, bounds_y = _window(img_h, new_h, top, bottom, interpolation)
        y0, y1 = int(bounds_y[0, 0]), int(bounds_y[-1, 0] + bounds_y[-1, 1])
        bounds_y[:, 0] -= y0
    rawmode, word, channels = _RAW[image.mode]
    pixels = region_reader()(image, (x0, y0, x1, y1), rawmode, word)
    unpremultiply = _NO_TABLE
    if image.mode == "RGBA":
        _premultiply_words(pixels)
        unpremultiply = alpha_tables()[1]

    def vertical(words: np.ndarray) -> np.ndarray:
        out = _scratch("vertical", (height, words.shape[1]), word)
        _convolve_rows(words.view(np.uint8), weights_y, bounds_y, out.view(np.uint8))
        return out

    def horizontal(words: np.ndarray) -> np.ndarray:  # on a transposed copy, so that it too runs along rows
        out = _scratch("horizontal", (width, words.shape[0]), word)
        _convolve_rows(_transposed(words, "columns").view(np.uint8), weights_x, bounds_x, out.view(np.uint8))
        return _transposed(out, "rows")

    order = pillow_pass_order()
    assert order is not None  # covers() refused the image otherwise
    passes = [(need_horizontal, horizontal), (need_vertical, vertical)]
    for needed, run_pass in reversed(passes) if order(img_w, img_h, new_w, new_h) else passes:
        if needed:
            pixels = run_pass(pixels)
    out = np.empty((3, height, width), np.float32)
    _normalise(pixels.view(np.uint8).reshape(height, width, channels), unpremultiply, table, out)
    return out


def _window(in_size: int, out_size: int, first: int, stop: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    """The weights of output pixels [first, stop) and a writable copy of their bounds."""
    weights, bounds = filter_weights(in_size, out_size, interpolation)
    return weights[first:stop], bounds[first:stop].copy()
