"""What `clip-export embed` reads: the reader seam both engines share.

An INPUT is an image file, a folder (recursive, by image extension), a text file with one caption a
line, or a Parquet / CSV / JSONL table whose `--column` holds image paths, encoded image bytes or
captions. Each becomes Items: an id (the path, or `table#row` / `file#line`), a kind (image or
text) and where its content comes from. Content is read and hashed later (`load`), in the engine's
worker threads, so listing a million files costs a directory walk and nothing more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import Manifest
from clip_export.core.errors import ClipExportError, import_optional
from clip_export.core.evalset import IMAGE_SUFFIXES
from clip_export.core.spec import (
    EMBED_CAPTION_SUFFIXES,
    EMBED_PART_ACTIVATIONS,
    EMBED_PART_ROWS,
    EMBED_TABLE_SUFFIXES,
    ONNX_FORMAT,
    WIDEST_ACTIVATION_DETAIL,
)

TOWER_OF_KIND = {"image": "visual", "text": "text"}  # what each kind of item is embedded by


@dataclass(frozen=True)
class Item:
    id: str
    kind: str  # "image" | "text"
    path: str | None = None  # an image file to read
    data: bytes | None = None  # encoded image bytes from a table
    text: str | None = None  # a caption


@dataclass(frozen=True)
class Loaded:
    """An item's content, read: `content` is the image bytes or the caption, `error` why not."""

    item: Item
    sha256: str
    content: bytes | str | None
    error: str | None = None


def pyarrow_module(purpose: str) -> Any:
    return import_optional("pyarrow", package="pyarrow", extra="embed", purpose=purpose)


def in_batching_order(items: Sequence[Item]) -> list[Item]:
    """Images as listed, then captions from the shortest to the longest (a stable sort by characters,
    a cheap stand-in for tokens): a text graph that cuts trailing padding runs each batch to its
    longest caption, so captions of a similar length should share a batch. Rows are written in this
    order; each keeps its id."""
    images = [item for item in items if item.kind == "image"]
    return images + sorted((item for item in items if item.kind != "image"), key=lambda item: len(item.text or ""))


def part_slices(count: int, workers: int, most_rows: int | None = None) -> list[slice]:
    """How both engines split a batch of `count` rows for inference: contiguous parts, sizes within
    one, at least one per worker (fewer when the batch is smaller) and, given `most_rows`, none larger
    than that; none for no rows. The parts are the runs dynamic INT8 scales its activations over."""
    if count == 0:
        return []
    parts = min(workers, count)
    if most_rows:
        parts = max(parts, -(-count // most_rows))
    return [slice(int(p[0]), int(p[-1]) + 1) for p in np.array_split(np.arange(count), parts)]


def part_rows_by_kind(manifest: Manifest) -> dict[str, int]:
    """The most rows one inference part runs, per item kind: as many as hold spec.EMBED_PART_ACTIVATIONS
    elements at the tower's widest activation, which export records on its fp32 artifact (at least one),
    so a part's activations stay in cache on a wide model as on ViT-B/32; EMBED_PART_ROWS where the
    export did not record it."""
    rows = {}
    for kind, tower in TOWER_OF_KIND.items():
        recorded = [e.detail(WIDEST_ACTIVATION_DETAIL) for e in manifest.select(tower=tower, format=ONNX_FORMAT)]
        widest = next((w for w in recorded if w), None)
        rows[kind] = max(1, EMBED_PART_ACTIVATIONS // int(widest)) if widest else EMBED_PART_ROWS
    return rows


def list_items(inputs: Sequence[str | Path], column: str | None = None) -> list[Item]:
    """Every item of every INPUT, in a stable order; ids are unique (a repeated id is one item)."""
    if not inputs:
        raise ClipExportError("embed needs at least one INPUT: image files, folders, a captions .txt or a table")
    seen: dict[str, Item] = {}
    for raw in inputs:
        for item in _items_of(Path(raw), column):
            seen.setdefault(item.id, item)
    return list(seen.values())


def _items_of(path: Path, column: str | None) -> Iterator[Item]:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix.lower() in IMAGE_SUFFIXES
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
        yield from (Item(str(p), "image", path=str(p)) for p in files)
        return
    if not path.is_file():
        raise ClipExportError(f"INPUT {path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        yield Item(str(path), "image", path=str(path))
    elif suffix in EMBED_CAPTION_SUFFIXES:
        lines = path.read_text(encoding="utf-8").splitlines()
        yield from (Item(f"{path}#{n}", "text", text=line) for n, line in enumerate(lines, 1) if line.strip())
    elif suffix in EMBED_TABLE_SUFFIXES:
        yield from _table_items(path, column)
    else:
        known = ", ".join(IMAGE_SUFFIXES + EMBED_CAPTION_SUFFIXES + EMBED_TABLE_SUFFIXES)
        raise ClipExportError(
            f"INPUT {path}: {suffix or 'no suffix'} is not an input embed reads; use a folder or one of {known}"
        )


def _table_items(path: Path, column: str | None) -> Iterator[Item]:
    pa = pyarrow_module(f"reading the table {path.name}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = import_optional(
            "pyarrow.parquet", package="pyarrow", extra="embed", purpose="reading Parquet"
        ).read_table(path)
    elif suffix == ".csv":
        table = import_optional("pyarrow.csv", package="pyarrow", extra="embed", purpose="reading CSV").read_csv(path)
    else:
        table = import_optional("pyarrow.json", package="pyarrow", extra="embed", purpose="reading JSONL").read_json(
            path
        )
    if not column:
        raise ClipExportError(
            f"INPUT {path} is a table: name the column with image paths, image bytes or captions with "
            f"--column (it has: {', '.join(table.column_names)})"
        )
    if column not in table.column_names:
        raise ClipExportError(f"INPUT {path} has no column {column!r}; it has: {', '.join(table.column_names)}")
    field = table.schema.field(column).type
    values = table.column(column).to_pylist()
    if pa.types.is_binary(field) or pa.types.is_large_binary(field):
        yield from (Item(f"{path}#{row}", "image", data=value) for row, value in enumerate(values) if value is not None)
        return
    if not (pa.types.is_string(field) or pa.types.is_large_string(field)):
        raise ClipExportError(
            f"column {column!r} of {path} holds {field}; embed reads image paths, image bytes or captions"
        )
    strings = [v for v in values if v]
    if strings and all(Path(v).suffix.lower() in IMAGE_SUFFIXES for v in strings):
        base = path.parent
        for value in strings:  # relative paths are relative to the table, as in a dataset folder
            image = Path(value) if Path(value).is_absolute() else base / value
            yield Item(str(image), "image", path=str(image))
        return
    yield from (Item(f"{path}#{row}", "text", text=value) for row, value in enumerate(values) if value)


def load(item: Item) -> Loaded:
    """Read an item's content and hash it; a file that cannot be read is an error, not an exception."""
    if item.kind == "text":
        text = item.text or ""
        return Loaded(item, hashlib.sha256(text.encode("utf-8")).hexdigest(), text)
    if item.data is not None:
        return Loaded(item, hashlib.sha256(item.data).hexdigest(), item.data)
    try:
        data = Path(item.path or "").read_bytes()
    except OSError as exc:
        return Loaded(item, "", None, f"cannot read {item.path}: {exc.strerror or type(exc).__name__}")
    if not data:
        return Loaded(item, hashlib.sha256(data).hexdigest(), None, "the file is empty (0 bytes)")
    return Loaded(item, hashlib.sha256(data).hexdigest(), data)


@dataclass(frozen=True)
class Prepared:
    """One item after the reader and the mapper's preprocessing: pixels (images) or token ids
    (captions), or why not, or `skip` when the index already holds it."""

    loaded: Loaded
    array: np.ndarray | None
    skip: bool = False


def prepare(model: Any, item: Item, unchanged: Callable[[Loaded], bool]) -> Prepared:
    """Read, hash, and decode and preprocess an image or tokenize a caption with the model's own
    preprocessing and tokenizer; what fails becomes the item's error. Both engines run this in their
    workers, so the inference loop only stacks rows and runs the session."""
    loaded = load(item)
    if loaded.error is None and unchanged(loaded):
        return Prepared(loaded, None, skip=True)
    if loaded.error is not None:
        return Prepared(loaded, None)
    if item.kind == "text":  # a str always tokenizes; a tokenizer that cannot load stops the run
        return Prepared(loaded, model.tokenize([loaded.content])[0])
    try:
        return Prepared(loaded, model.pixel_values(loaded.content)[0])
    except ClipExportError as exc:
        return Prepared(Loaded(item, loaded.sha256, None, str(exc).removeprefix("images[0]: ")), None)
