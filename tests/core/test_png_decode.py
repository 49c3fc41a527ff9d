from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_export.core import png_decode, preprocess
from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import BUNDLED_DIR
from clip_export.core.png_decode import decode_spng, spng_decodable
from clip_export.core.preprocess import load_image

# The tests of the libspng path need the embed extra's imagecodecs; the ones of what stays with Pillow run without it.
needs_libspng = pytest.mark.skipif(
    not png_decode.spng_available(), reason="the embed extra's imagecodecs (libspng) is not installed"
)

BUNDLED_PNGS = sorted((BUNDLED_DIR / "images").glob("*.png"))


def _png(image: Image.Image, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def _pillow(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as handle:
        handle.load()
        return handle.copy()


def _random(mode: str, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (37, 53, 4), dtype=np.uint8)
    return Image.fromarray(pixels, "RGBA").convert(mode)


@needs_libspng
def test_libspng_gives_pillows_pixels_and_mode_for_every_plain_png() -> None:
    """Every bundled PNG and a random grey, RGB and RGBA one: the bytes decode to Pillow's exact image."""
    cases = {path.name: path.read_bytes() for path in BUNDLED_PNGS}
    cases.update({f"random {mode}": _png(_random(mode)) for mode in png_decode.SPNG_MODES})
    decoded_modes = set()
    for name, data in cases.items():
        with Image.open(io.BytesIO(data)) as handle:
            assert spng_decodable(handle), name
            fast = decode_spng(data, handle.size)
        expected = _pillow(data)
        assert fast is not None, name
        assert fast.mode == expected.mode and fast.size == expected.size, name
        assert np.array_equal(np.asarray(fast), np.asarray(expected)), name
        decoded_modes.add(fast.mode)
    assert decoded_modes == set(png_decode.SPNG_MODES)
    assert "coffee-and-cat-wide-alpha.png" in cases  # the wide photo the add_documents benchmark decodes


def _rgb16() -> bytes:
    """A 16-bit RGB PNG, written chunk by chunk: Pillow opens it as "RGB" but cannot write one."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    width, height = 5, 3
    rows = b"".join(b"\0" + bytes(range(row, row + 6 * width)) for row in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _apng() -> bytes:
    out = io.BytesIO()
    _random("RGB", 1).save(out, "PNG", save_all=True, append_images=[_random("RGB", 2)])
    return out.getvalue()


OTHER_PNGS = {
    "palette": lambda: _png(_random("P")),
    "grey with alpha": lambda: _png(_random("LA")),
    "1-bit": lambda: _png(_random("1")),
    "16-bit grey": lambda: _png(Image.fromarray(np.arange(37 * 53, dtype=np.uint16).reshape(37, 53) * 31)),
    "16-bit RGB": _rgb16,
    "RGB with tRNS": lambda: _png(_random("RGB"), transparency=(1, 2, 3)),
    "animated": _apng,
}


@pytest.mark.parametrize("kind", sorted(OTHER_PNGS))
def test_other_pngs_are_left_to_pillow(kind: str) -> None:
    data = OTHER_PNGS[kind]()
    with Image.open(io.BytesIO(data)) as handle:
        assert not spng_decodable(handle)
        assert kind != "16-bit RGB" or handle.mode == "RGB"  # excluded by its raw mode, not its mode
    decoded = load_image(data)
    expected = _pillow(data)
    assert decoded.mode == expected.mode and np.array_equal(np.asarray(decoded), np.asarray(expected))


def test_interlaced_pngs_are_left_to_pillow() -> None:
    """Pillow cannot write Adam7; the flag it reads from IHDR is what keeps such files off libspng."""
    with Image.open(BUNDLED_PNGS[0]) as handle:
        assert spng_decodable(handle)
        handle.info["interlace"] = 1
        assert not spng_decodable(handle)


@needs_libspng
def test_load_image_decodes_plain_pngs_through_libspng(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    def counted(data: bytes | memoryview, size: tuple[int, int]) -> Image.Image | None:
        calls.append(size)
        return decode_spng(data, size)

    monkeypatch.setattr(preprocess, "decode_spng", counted)
    wide = BUNDLED_DIR / "images" / "coffee-and-cat-wide-alpha.png"
    copy = tmp_path / "wide.png"
    copy.write_bytes(wide.read_bytes())
    expected = np.asarray(_pillow(wide.read_bytes()))
    for source in (wide.read_bytes(), copy, str(copy)):  # bytes, a Path, a str path
        assert np.array_equal(np.asarray(load_image(source)), expected)
    assert calls == [(2162, 762)] * 3


@needs_libspng
def test_a_png_libspng_refuses_gets_pillows_own_error() -> None:
    """A truncated file: libspng refuses it, and the error the user sees is Pillow's, as without imagecodecs."""
    data = (BUNDLED_DIR / "images" / "coffee-and-cat-wide-alpha.png").read_bytes()[:100_000]
    with Image.open(io.BytesIO(data)) as handle:
        assert spng_decodable(handle)
        assert decode_spng(data, handle.size) is None
    with pytest.raises(ClipExportError, match=r"cannot read the image of 100000 bytes: image file is truncated"):
        load_image(data)


@needs_libspng
def test_without_imagecodecs_pillow_decodes_the_same_pixels(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _png(_random("RGBA", 3))
    fast = np.asarray(load_image(data))
    monkeypatch.setattr(png_decode, "_imagecodecs", lambda: None)
    assert not png_decode.spng_available()
    assert decode_spng(data, (53, 37)) is None
    assert np.array_equal(np.asarray(load_image(data)), fast)
