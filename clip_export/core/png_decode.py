"""PNG decoding through libspng (imagecodecs), for the PNGs whose pixels it gives exactly as Pillow.

libspng decodes wide PNGs faster than Pillow does, and imagecodecs releases the GIL while it runs.
`clip-export embed` decodes on threads beside inference on the same cores, so what a decode costs
slows the whole corpus. The measured gain is in docs/benchmarks.md ("PNGs through libspng").

Only 8-bit grey, RGB and RGBA PNGs, not interlaced, without tRNS or animation, take this path: for
them the PNG format fixes the pixels, so both decoders agree bit for bit (tests hold it on every
bundled PNG). Everything else, every PNG that libspng refuses (Pillow then decodes it or says why)
and every machine without the `embed` extra's imagecodecs, goes through Pillow.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image

SPNG_MODES = ("L", "RGB", "RGBA")  # Pillow's modes for 8-bit grey, RGB and RGBA PNGs


@lru_cache(maxsize=1)
def _imagecodecs() -> Any:
    try:
        import imagecodecs
    except ImportError:  # an accelerator only: Pillow decodes the same pixels without it
        return None
    return imagecodecs


def spng_available() -> bool:
    return _imagecodecs() is not None


def spng_decodable(handle: Image.Image) -> bool:
    """Whether an opened, not yet loaded image is a PNG that libspng decodes to Pillow's pixels."""
    tile = getattr(handle, "tile", None) or []
    return (
        handle.format == "PNG"
        and handle.mode in SPNG_MODES
        and len(tile) == 1
        and tile[0][3] == handle.mode  # the raw mode: "RGB;16B", "L;4" and the like are not 8-bit
        and not handle.info.get("interlace")
        and "transparency" not in handle.info
        and not getattr(handle, "is_animated", False)
    )


def decode_spng(data: bytes | memoryview, size: tuple[int, int]) -> Image.Image | None:
    """The PNG in `data` (width, height = size) decoded by libspng, or None where Pillow should decode
    it: imagecodecs missing, or a file libspng refuses (truncated, a bad CRC)."""
    codecs = _imagecodecs()
    if codecs is None:
        return None
    try:
        pixels: np.ndarray = codecs.spng_decode(data)
    except codecs.SpngError:
        return None
    if pixels.dtype != np.uint8 or pixels.shape[:2] != (size[1], size[0]):
        return None
    return Image.fromarray(pixels)
