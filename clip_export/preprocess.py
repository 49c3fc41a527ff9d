"""Image preprocessing without torch, exact to open_clip's PIL pipeline, plus faster variants.

The reference is open_clip's eval transform: Resize(short side, bicubic) → CenterCrop → RGB →
ToTensor → Normalize. torchvision applies PIL's own resize to PIL images, so the same PIL calls
here give bit-identical pixels; tests hold that.
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .errors import ClipExportError
from .models import PreprocessConfig

_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int) rule: the short side becomes `size`, the long side is truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def load_image(item: str | Path | Image.Image) -> Image.Image:
    """A decoded copy of an image file (or the image itself), with one clear error when unreadable."""
    if isinstance(item, Image.Image):
        return item
    try:
        with Image.open(item) as handle:
            handle.load()
            return handle.copy()
    except OSError as exc:
        raise ClipExportError(f"cannot read image {item}: {exc}") from None


def _resize_shortest(image: Image.Image, size: int, interpolation: str, reducing_gap: float | None = None) -> Image.Image:
    width, height = image.size
    new_w, new_h = shortest_side_size(width, height, size)
    if (new_w, new_h) == (width, height):
        return image
    return image.resize((new_w, new_h), _PIL_FILTERS[interpolation], reducing_gap=reducing_gap)


def _crop_offsets(img_w: int, img_h: int, width: int, height: int) -> tuple[int, int]:
    """torchvision's CenterCrop corner (left, top), rounding half to even as it does."""
    return int(round((img_w - width) / 2.0)), int(round((img_h - height) / 2.0))


def _center_crop(image: Image.Image, height: int, width: int) -> Image.Image:
    img_w, img_h = image.size
    if img_w < width or img_h < height:  # torchvision pads with zeros before cropping
        canvas = Image.new(image.mode, (max(img_w, width), max(img_h, height)))
        canvas.paste(image, ((canvas.width - img_w) // 2, (canvas.height - img_h) // 2))
        image, img_w, img_h = canvas, canvas.width, canvas.height
    left, top = _crop_offsets(img_w, img_h, width, height)
    return image.crop((left, top, left + width, top + height))


@lru_cache(maxsize=16)
def _normalization_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """[3, 256] float32: each uint8 value through ToTensor and Normalize, with the same float32
    operations torchvision applies per pixel, so a table lookup is bit-identical and 8x faster."""
    values = np.arange(256, dtype=np.float32)[:, None] * np.float32(1.0 / 255.0)
    table = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(table.T)


def _normalize(rgb: Image.Image, config: PreprocessConfig, out: np.ndarray | None = None) -> np.ndarray:
    """[3, H, W] float32 from an RGB image, written into `out` (a [3, H, W] view) when given."""
    pixels = np.asarray(rgb)
    table = _normalization_table(tuple(config.mean), tuple(config.std))
    if out is None:
        out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def _require_shortest_side(config: PreprocessConfig) -> None:
    if config.resize_mode != "shortest":
        raise ValueError(f"resize_mode {config.resize_mode!r} is not supported by the numpy preprocessor")


def preprocess_reference(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """open_clip's order: resize and crop in the image's own mode, then convert to RGB."""
    height, width = config.image_size
    _require_shortest_side(config)
    resized = _resize_shortest(image, min(height, width), config.interpolation)
    return _normalize(_center_crop(resized, height, width).convert("RGB"), config)


def preprocess_rgb_first(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Convert to RGB before resizing: fewer channels to resample, different pixels for RGBA/L."""
    return preprocess_reference(image.convert("RGB"), config)


def preprocess_draft(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """Let the JPEG decoder downscale by a power of two first (Image.draft); exact only when no draft applies."""
    height, width = config.image_size
    if image.format == "JPEG":
        image.draft("RGB", (width * 2, height * 2))
    return preprocess_reference(image, config)


def preprocess_reducing_gap(image: Image.Image, config: PreprocessConfig, gap: float = 3.0) -> np.ndarray:
    height, width = config.image_size
    resized = _resize_shortest(image, min(height, width), config.interpolation, reducing_gap=gap)
    return _normalize(_center_crop(resized, height, width).convert("RGB"), config)


# PIL's filter half-widths at scale 1; the resample window grows with the downscale factor.
_FILTER_SUPPORT = {"nearest": 0.5, "bilinear": 1.0, "bicubic": 2.0, "lanczos": 3.0}
_band_pool: ThreadPoolExecutor | None = None


def _band_workers() -> ThreadPoolExecutor:
    global _band_pool
    if _band_pool is None:
        _band_pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="clip-export-resize")
    return _band_pool


def _forget_band_workers() -> None:
    global _band_pool
    _band_pool = None  # a forked child has no threads behind the parent's pool


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_forget_band_workers)


def preprocess_crop_box(image: Image.Image, config: PreprocessConfig, bands: int = 1) -> np.ndarray:
    """Resample only the source region that survives the centre crop (PIL's `box`), at the same
    scale as the reference, so the bicubic weights match. Pixels differ by at most one uint8 step
    where float rounding of the box offset flips; wide images resample 2-3x fewer pixels.

    The source is cut to that region plus the filter's reach before resizing, so an RGBA image is
    premultiplied only where it matters. With bands > 1, horizontal bands of the output are
    resampled on worker threads at once (PIL releases the GIL while it resamples)."""
    _require_shortest_side(config)  # the crop box below is the shortest-side rule's
    height, width = config.image_size
    img_w, img_h = image.size
    new_w, new_h = shortest_side_size(img_w, img_h, min(height, width))
    if (new_w, new_h) == (img_w, img_h) or new_w < width or new_h < height:
        return preprocess_reference(image, config)
    left, top = _crop_offsets(new_w, new_h, width, height)
    scale_x, scale_y = img_w / new_w, img_h / new_h
    x0, x1 = left * scale_x, min((left + width) * scale_x, float(img_w))
    support = _FILTER_SUPPORT[config.interpolation]
    margin_x = math.ceil(support * max(scale_x, 1.0)) + 2
    margin_y = math.ceil(support * max(scale_y, 1.0)) + 2
    cut_x0, cut_x1 = max(int(x0) - margin_x, 0), min(math.ceil(x1) + margin_x, img_w)
    image.load()  # decode once, here: band threads must not race to decode a lazy image
    out = np.empty((3, height, width), dtype=np.float32)

    def resample_rows(row0: int, row1: int) -> None:
        y0, y1 = (top + row0) * scale_y, min((top + row1) * scale_y, float(img_h))
        cut_y0, cut_y1 = max(int(y0) - margin_y, 0), min(math.ceil(y1) + margin_y, img_h)
        region = image.crop((cut_x0, cut_y0, cut_x1, cut_y1))
        box = (x0 - cut_x0, y0 - cut_y0, x1 - cut_x0, y1 - cut_y0)
        _normalize(region.resize((width, row1 - row0), _PIL_FILTERS[config.interpolation], box=box).convert("RGB"), config, out[:, row0:row1])

    # Upscales are cheap and their band seams shift more pixels, so they stay in one piece.
    bands = 1 if min(scale_x, scale_y) < 1.0 else max(1, min(bands, height))
    edges = [round(i * height / bands) for i in range(bands + 1)]
    pending = [_band_workers().submit(resample_rows, a, b) for a, b in zip(edges[1:-1], edges[2:])]
    resample_rows(edges[0], edges[1])
    for job in pending:
        job.result()
    return out


def preprocess_crop_box_parallel(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """The crop-box resize in two bands at once: the runtime's default for one image at a time."""
    return preprocess_crop_box(image, config, bands=2)


def preprocess_opencv(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    import cv2

    height, width = config.image_size
    array = np.asarray(image.convert("RGB"))
    img_h, img_w = array.shape[:2]
    new_w, new_h = shortest_side_size(img_w, img_h, min(height, width))
    resized = cv2.resize(array, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    left, top = _crop_offsets(new_w, new_h, width, height)
    return _normalize(Image.fromarray(resized[top : top + height, left : left + width]), config)


VARIANTS: dict[str, Callable[[Image.Image, PreprocessConfig], np.ndarray]] = {
    "reference-pil": preprocess_reference,
    "crop-box-resize": preprocess_crop_box,
    "crop-box-resize-2-threads": preprocess_crop_box_parallel,
    "rgb-first": preprocess_rgb_first,
    "jpeg-draft": preprocess_draft,
    "reducing-gap-3": preprocess_reducing_gap,
    "opencv": preprocess_opencv,
}


def preprocess_batch(images: list[Image.Image], config: PreprocessConfig) -> np.ndarray:
    return np.stack([preprocess_reference(image, config) for image in images]).astype(np.float32)
