"""Regenerate the bundled evaluation images from scikit-image's sample photographs.

Run once by a maintainer (`python tools/make_evalset.py`); the output is committed so that
users need neither scikit-image nor a network. Licences are listed in docs/evalset.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import skimage
from PIL import Image

SOURCE = Path(os.path.dirname(skimage.__file__)) / "data"
TARGET = Path(__file__).resolve().parent.parent / "clip_export" / "evalset" / "images"

# name -> (source file, crop box or None); crops give distinct views of the larger photographs.
PLAIN = {
    "astronaut": ("astronaut.png", None),
    "astronaut-face": ("astronaut.png", (140, 20, 340, 220)),
    "brick": ("brick.png", None),
    "cat-chelsea": ("chelsea.png", None),
    "clock-motion": ("clock_motion.png", None),
    "coffee": ("coffee.png", None),
    "coffee-cup-detail": ("coffee.png", (150, 60, 450, 300)),
    "coins": ("coins.png", None),
    "grass": ("grass.png", None),
    "gravel": ("gravel.png", None),
    "hubble-deep-field": ("hubble_deep_field.jpg", None),
    "hubble-galaxies-detail": ("hubble_deep_field.jpg", (500, 400, 900, 800)),
    "immunohistochemistry": ("ihc.png", None),
    "microscopy-cells": ("cell.png", None),
    "moon": ("moon.png", None),
    "cat-face-detail": ("chelsea.png", (100, 0, 300, 200)),
    "coins-detail": ("coins.png", (0, 0, 200, 150)),
    "page-scan": ("page.png", None),
    "retina": ("retina.jpg", None),
    "retina-detail": ("retina.jpg", (400, 400, 1000, 1000)),
    "text-sign": ("text.png", None),
}


def _save_jpeg(image: Image.Image, name: str, max_side: int = 512) -> None:
    image = image.copy()
    image.thumbnail((max_side, max_side), Image.BICUBIC)
    mode = "L" if image.mode in ("L", "I", "I;16") else "RGB"
    image.convert(mode).save(TARGET / f"{name}.jpg", quality=90)


def main() -> None:
    TARGET.mkdir(parents=True, exist_ok=True)
    for stale in TARGET.iterdir():
        stale.unlink()
    for name, (source, box) in PLAIN.items():
        image = Image.open(SOURCE / source)
        _save_jpeg(image.crop(box) if box else image, name)
    # The report's two image kinds: a small JPEG (640x427) and a large RGBA PNG (2162x762).
    Image.open(SOURCE / "rocket.jpg").convert("RGB").save(TARGET / "rocket-small.jpg", quality=92)
    left = Image.open(SOURCE / "coffee.png").convert("RGB")
    right = Image.open(SOURCE / "chelsea.png").convert("RGB").resize((600, 400), Image.BICUBIC)
    strip = Image.new("RGB", (left.width + right.width, left.height))
    strip.paste(left, (0, 0))
    strip.paste(right, (left.width, 0))
    wide = strip.resize((2162, 762), Image.BICUBIC)
    alpha = np.tile(np.linspace(255, 96, wide.width, dtype=np.uint8), (wide.height, 1))
    wide.putalpha(Image.fromarray(alpha, "L"))
    wide.save(TARGET / "coffee-and-cat-wide-alpha.png", optimize=True)
    # A grayscale photograph kept in mode L, and one smaller than the 224 px crop.
    Image.open(SOURCE / "camera.png").convert("L").save(TARGET / "cameraman-grayscale.png", optimize=True)
    Image.open(SOURCE / "microaneurysms.png").convert("L").save(TARGET / "microaneurysms-tiny.png")
    # A drawing with an alpha channel (palette-free RGBA), as users upload them.
    Image.open(SOURCE / "horse.png").convert("RGBA").save(TARGET / "horse-silhouette-alpha.png", optimize=True)


if __name__ == "__main__":
    main()
