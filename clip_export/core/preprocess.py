"""Image preprocessing without torch, exact to open_clip's PIL pipeline, plus faster variants.

The reference is open_clip's eval transform: Resize(short side, bicubic) → CenterCrop → RGB →
ToTensor → Normalize, or for "squash" families (SigLIP, DFN) Resize((H, W)) with no crop. torchvision applies PIL's own resize to PIL images, so the same PIL calls
here give bit-identical pixels; tests hold that. `preprocess_fast` gives the same pixels in a
fraction of the time (clip_export.core.resample); the other variants are measured alternatives.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from clip_export.core.configs import PreprocessConfig, require_resize_mode
from clip_export.core.errors import ClipExportError
from clip_export.core.png_decode import decode_spng, spng_available, spng_decodable

_PIL_FILTERS = {
    "bicubic": Image.BICUBIC,
    "bilinear": Image.BILINEAR,
    "nearest": Image.NEAREST,
    "lanczos": Image.LANCZOS,
}


def shortest_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision's Resize(int) rule: the short side becomes `size`, the long side is truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


# Above this many pixels the default path runs PIL's own resize: the vectorised kernels' scratch
# buffers grow with the image, and past photo sizes they lose to PIL (docs/reliability.md).
FAST_MAX_PIXELS = 6000 * 4000
IMAGE_KINDS = "a file path, encoded image bytes, an HxWx3 uint8 RGB numpy array or a PIL image"


def pixel_limit() -> int | None:
    """PIL's decompression-bomb limit: it refuses to decode more than twice MAX_IMAGE_PIXELS."""
    return None if Image.MAX_IMAGE_PIXELS is None else 2 * Image.MAX_IMAGE_PIXELS


def load_image(item: Any) -> Image.Image:
    """A decoded image from what a service holds: a path, encoded bytes, an HWC uint8 array or a
    PIL image. Anything else, and empty, bomb-sized or unreadable images, is one ClipExportError."""
    if isinstance(item, Image.Image):
        image = item
    elif isinstance(item, np.ndarray):
        image = _from_array(item)
    elif isinstance(item, (bytes, bytearray, memoryview)):
        image = _decode(io.BytesIO(bytes(item)), f"of {len(item)} bytes")
    elif isinstance(item, (str, Path)):
        image = _decode(item, str(item))
    else:
        raise ClipExportError(f"type {type(item).__name__} is not an image; pass {IMAGE_KINDS}")
    width, height = image.size
    if width == 0 or height == 0:
        raise ClipExportError(f"the image is {width}x{height} pixels: there is nothing to embed")
    limit = pixel_limit()
    if limit is not None and width * height > limit:
        raise ClipExportError(
            f"the image is {width}x{height} pixels, over the {limit} pixel limit against decompression "
            "bombs (PIL.Image.MAX_IMAGE_PIXELS x 2); downscale it first"
        )
    return image


def _decode(source: str | Path | io.BytesIO, name: str) -> Image.Image:
    """Decode fully, without the extra copy the image would cost once decoded (12000x12000: 432 MB).
    PNGs that libspng decodes to the same pixels go through it (clip_export.core.png_decode)."""
    try:
        handle = Image.open(source)
        try:
            if spng_decodable(handle) and spng_available():
                with _encoded(source) as data:
                    decoded = decode_spng(data, handle.size)
                if decoded is not None:
                    handle.close()
                    return decoded
            handle.load()
        except BaseException:
            handle.close()
            raise
    except Image.UnidentifiedImageError as exc:
        raise ClipExportError(f"the image {name} is in no format Pillow can decode") from exc
    except Image.DecompressionBombError as exc:
        raise ClipExportError(f"the image {name} is too large to decode safely: {exc}") from exc
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError, EOFError...
        raise ClipExportError(f"cannot read the image {name}: {str(exc) or type(exc).__name__}") from exc
    if isinstance(source, io.BytesIO) or getattr(handle, "fp", None) is None:
        return handle  # single-frame files are closed once loaded; bytes hold no file
    with handle:  # multi-frame formats keep their file open: keep a copy, close the file
        return handle.copy()


def _encoded(source: str | Path | io.BytesIO) -> Any:
    """The encoded bytes, as a context: a view of an in-memory file, or the file read once more."""
    return source.getbuffer() if isinstance(source, io.BytesIO) else memoryview(Path(source).read_bytes())


def _from_array(array: np.ndarray) -> Image.Image:
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}.get(array.shape[-1]) if array.ndim == 3 else None
    if array.dtype != np.uint8 or mode is None:
        raise ClipExportError(
            f"a numpy array of shape {array.shape} and dtype {array.dtype} is not an image; pass {IMAGE_KINDS} "
            "(or HxW grey, HxWx4 RGBA)"
        )
    if array.size == 0:
        raise ClipExportError(f"the image is {array.shape[1]}x{array.shape[0]} pixels: there is nothing to embed")
    return Image.fromarray(np.ascontiguousarray(array))  # uint8 HxW, HxWx3, HxWx4: L, RGB, RGBA


def _resize_shortest(
    image: Image.Image, size: int, interpolation: str, reducing_gap: float | None = None
) -> Image.Image:
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
    operations torchvision applies per pixel (ToTensor divides by 255, it does not multiply by
    1/255: that differs by an ulp on 325 of the 768 entries), so a table lookup is bit-identical."""
    values = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    table = (values - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(table.T)


def _normalize(rgb: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """[3, H, W] float32 from an RGB image."""
    pixels = np.asarray(rgb)
    table = _normalization_table(tuple(config.mean), tuple(config.std))
    out = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def _resize_squash(image: Image.Image, height: int, width: int, interpolation: str) -> Image.Image:
    """torchvision's Resize((H, W)) on a PIL image: PIL's resize to exactly that size, no crop."""
    return image if image.size == (width, height) else image.resize((width, height), _PIL_FILTERS[interpolation])


def preprocess_reference(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """open_clip's order: resize (and crop) in the image's own mode, then convert to RGB."""
    height, width = config.image_size
    require_resize_mode(config.resize_mode, "the preprocessing config")
    if config.resize_mode == "squash":
        return _normalize(_resize_squash(image, height, width, config.interpolation).convert("RGB"), config)
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


def preprocess_fast(image: Image.Image, config: PreprocessConfig) -> np.ndarray:
    """open_clip's pixels bit for bit, resampling only what the centre crop keeps, in vectorised
    kernels (clip_export.core.resample); PIL's own path for what those kernels do not cover."""
    from clip_export.core import resample  # numba: imported on the first image, not with the runtime

    height, width = config.image_size
    img_w, img_h = image.size
    squash = config.resize_mode == "squash"
    new_w, new_h = (width, height) if squash else shortest_side_size(img_w, img_h, min(height, width))
    if (
        img_w * img_h > FAST_MAX_PIXELS
        or not resample.covers(image, config)
        or (new_w, new_h) == (img_w, img_h)
        or new_w < width
        or new_h < height
    ):
        return preprocess_reference(image, config)
    left, top = _crop_offsets(new_w, new_h, width, height)
    table = _normalization_table(tuple(config.mean), tuple(config.std))
    return resample.crop_resize_normalise(
        image, (new_w, new_h), (left, top, left + width, top + height), config.interpolation, table
    )


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
    "vectorised-crop-resize": preprocess_fast,
    "rgb-first": preprocess_rgb_first,
    "jpeg-draft": preprocess_draft,
    "reducing-gap-3": preprocess_reducing_gap,
    "opencv": preprocess_opencv,
}


def preprocess_batch(images: list[Image.Image], config: PreprocessConfig) -> np.ndarray:
    return np.stack([preprocess_reference(image, config) for image in images]).astype(np.float32)
