"""What the indexing benchmarks (add_documents, embed_part_rows, embed_pool) share: their corpus (the
bundled photos and the report's two image sizes, a 640×427 JPEG and a 2162×762 RGBA PNG written as
noise, repeated under new names to at least MIN_DOCS files, and the bundled captions repeated as
often), the local engine run on it, and the engine's inference parts alone."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from clip_export.core.environment import current_environment
from clip_export.core.evalset import BUNDLED_DIR, load_evalset
from clip_export.core.progress import silent
from clip_export.core.spec import EMBED_CHUNK_ROWS
from clip_export.runtime import ClipOnnx
from clip_export.stages.embed.embed import artifact_record
from clip_export.stages.embed.embed_inputs import in_batching_order, list_items, part_rows_by_kind, part_slices
from clip_export.stages.embed.embed_local import run_local
from clip_export.stages.embed.embed_store import ChunkWriter, Store, new_manifest

MIN_DOCS = 112
RESULTS = Path(__file__).parent / "results"


def save_results(stem: str, rows: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """Write RESULTS/<stem>.json: its rows under a meta that starts with when and on which CPU (and how
    many cores, unless `fields` says), then `fields`. Returns the meta, for the printed header."""
    meta = {
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "cpu": current_environment("CPUExecutionProvider").describe(),
        "cores": os.cpu_count(),
        **fields,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return meta


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


def parallel_pure(run: Callable[[np.ndarray], Any], rows: np.ndarray, cbs: int, workers: int, most_rows: int) -> None:
    """The engine's inference alone: each batch split into parts as the engine splits it (at most
    `most_rows` rows, the tower's part_rows_by_kind), run a part per worker at once."""
    batches = [rows[i : i + cbs] for i in range(0, len(rows), cbs)]
    parts = [batch[part] for batch in batches for part in part_slices(len(batch), workers, most_rows)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, parts))


def local_engine(model: ClipOnnx, precision: str, inputs: list[Path], cbs: int, workers: int) -> None:
    """`clip-export embed`'s local engine on an opened artifact, as the command runs it by default,
    into a store that is thrown away."""
    items = in_batching_order(list_items(inputs))  # as `clip-export embed` orders them
    with tempfile.TemporaryDirectory() as out:
        store = Store(Path(out) / "index")
        record = artifact_record(model, precision)
        store.write_manifest(new_manifest(record, 0))
        writer = ChunkWriter(store, record["key"], EMBED_CHUNK_ROWS)
        # chunks, workers and part rows as `clip-export embed` runs by default
        parts = part_rows_by_kind(model.manifest)
        run_local(model, items, {}, {record["key"]}, writer, cbs, silent, workers=workers, part_rows=parts)
