"""The indexing benchmarks' corpus (add_documents, embed_part_rows, embed_pool): the bundled photos and
the report's two image sizes (a 640×427 JPEG and a 2162×762 RGBA PNG, written as noise), repeated
under new names to at least MIN_DOCS files, and the bundled captions repeated as often."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from clip_export.core.evalset import BUNDLED_DIR, load_evalset

MIN_DOCS = 112


def corpus(folder: Path, docs: int = MIN_DOCS) -> tuple[list[str], list[str]]:
    """`docs` photo files written into `folder` (their paths) and `docs` distinct captions."""
    rng = np.random.default_rng(0)
    photos = sorted((BUNDLED_DIR / "images").iterdir())
    Image.fromarray(rng.integers(0, 256, (427, 640, 3), dtype=np.uint8)).save(folder / "report-640x427.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (762, 2162, 4), dtype=np.uint8), "RGBA").save(folder / "report-2162x762.png")
    sources = photos + [folder / "report-640x427.jpg", folder / "report-2162x762.png"]
    paths = []
    while len(paths) < docs:
        source = sources[len(paths) % len(sources)]
        target = folder / f"{len(paths):04d}-{source.name}"
        target.write_bytes(source.read_bytes())
        paths.append(str(target))
    captions = list(load_evalset().captions)
    texts = (captions * (docs // len(captions) + 1))[:docs]
    return paths, [f"{t} ({n})" for n, t in enumerate(texts)]


class Inputs(NamedTuple):
    folder: Path  # the photos, as `clip-export embed` is given them
    paths: list[str]
    caption_file: Path  # the captions, one a line
    captions: list[str]


def corpus_inputs(tmp: Path, docs: int = MIN_DOCS) -> Inputs:
    """The corpus written under `tmp` as the engine reads it: a folder of photos and a captions file."""
    folder = tmp / "images"
    folder.mkdir()
    paths, captions = corpus(folder, docs)
    caption_file = tmp / "captions.txt"
    caption_file.write_text("\n".join(captions) + "\n")
    return Inputs(folder, paths, caption_file, captions)
