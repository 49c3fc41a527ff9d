"""The bundled evaluation set: real photographs and captions that every artifact is checked on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from clip_export.core.errors import ClipExportError

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "evalset"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass(frozen=True)
class EvalSet:
    image_paths: tuple[Path, ...]
    captions: tuple[str, ...]
    source: str

    @property
    def image_names(self) -> list[str]:
        return [p.name for p in self.image_paths]

    def open_images(self) -> list[Image.Image]:
        from clip_export.core.preprocess import load_image

        return [load_image(path) for path in self.image_paths]


def load_evalset(images: Path | None = None, texts: Path | None = None) -> EvalSet:
    image_dir = Path(images) if images else BUNDLED_DIR / "images"
    if not image_dir.is_dir():
        raise ClipExportError(f"--images {image_dir} is not a directory")
    paths = tuple(sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
    if len(paths) < 2:
        raise ClipExportError(f"{image_dir} holds {len(paths)} images; retrieval checks need at least 2")
    if texts:
        text_path = Path(texts)
        if not text_path.is_file():
            raise ClipExportError(f"--texts {text_path}: no such file")
        try:
            text = text_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ClipExportError(
                f"--texts {text_path} is not UTF-8 text (a binary file?); give one caption a line"
            ) from exc
        if text_path.suffix == ".json":
            captions = tuple(str(c) for c in json.loads(text))
        else:
            captions = tuple(line.rstrip("\n") for line in text.splitlines())
    else:
        captions = tuple(json.loads((BUNDLED_DIR / "captions.json").read_text(encoding="utf-8")))
    if len(captions) < 2:
        raise ClipExportError("retrieval checks need at least 2 captions")
    source = "bundled" if not images and not texts else f"images={images or 'bundled'}, texts={texts or 'bundled'}"
    return EvalSet(paths, captions, source)
