"""Where `clip-export embed` writes: the writer seam both engines share.

    OUT/dataset.json                 what built the index: the artifact, the environment, each run
    OUT/embeddings/part-NNNNNNNN.parquet   id, kind, sha256, embedding (float32, L2-normalised)
    OUT/errors.parquet               the items the latest run could not embed, with the reason
    OUT/file-stats.parquet           image files' size, times and inode beside their hash (embed_filestats)

Every file is written beside its target and renamed into place, so a SIGKILL loses at most the
chunk in flight and never leaves half a file. Each chunk names the artifact that made its rows (in
its Parquet metadata): the index of what is done is read back from the chunks themselves, by id and
content hash, so a re-run embeds only new or changed items. A later chunk supersedes an earlier
row with the same id; compaction rewrites chunks without their superseded rows.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.errors import ClipExportError, OutputError
from clip_export.core.manifest import atomic_write_bytes, atomic_write_text, now_iso, to_jsonable
from clip_export.core.spec import EMBED_DATA_DIR, EMBED_ERRORS_NAME, EMBED_FILE_STATS_NAME, EMBED_MANIFEST_NAME
from clip_export.stages.embed.embed_inputs import pyarrow_module

FORMAT = "clip-export embeddings"
SCHEMA_VERSION = 1
COLUMNS = ("id", "kind", "sha256", "embedding")
ARTIFACT_KEY = b"clip_export.artifact_key"
_PART = re.compile(r"^part-(\d{8})\.parquet$")


@dataclass(frozen=True)
class Done:
    sha256: str
    artifact_key: str


def parquet_module() -> Any:
    pyarrow_module("writing embeddings")
    import pyarrow.parquet as pq

    return pq


def _schema(dim: int, key: str) -> Any:
    pa = pyarrow_module("writing embeddings")
    fields = [
        pa.field("id", pa.string()),
        pa.field("kind", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("embedding", pa.list_(pa.float32(), dim)),
    ]
    return pa.schema(fields, metadata={ARTIFACT_KEY: key.encode()})


class Store:
    """One output directory: its manifest, its chunks and its errors table."""

    def __init__(self, out: Path) -> None:
        self.out = Path(out)
        self.data = self.out / EMBED_DATA_DIR
        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"--out {self.out} is a file, not a directory")
        if (
            self.out.is_dir()
            and any(not p.name.startswith(".") for p in self.out.iterdir())
            and not (self.out / EMBED_MANIFEST_NAME).exists()
        ):
            raise OutputError(
                f"--out {self.out} holds files but no {EMBED_MANIFEST_NAME}: not an embeddings dataset; choose "
                "an empty or new directory"
            )
        self.manifest: dict[str, Any] | None = self._read_manifest()

    def _read_manifest(self) -> dict[str, Any] | None:
        path = self.out / EMBED_MANIFEST_NAME
        if not path.exists():
            return None
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(
                f"{path} cannot be read as JSON ({exc}); it was not written by clip-export embed"
            ) from None
        if manifest.get("format") != FORMAT or "artifact" not in manifest:
            raise OutputError(f"{path} is not a clip-export embeddings manifest")
        return manifest

    def remove_stale_temporaries(self) -> int:
        """A killed run's half-written chunk lies under a hidden .tmp name no reader opens; the next
        run (holding the directory's lock) removes it."""
        stale = (
            [
                *self.data.glob(".part-*.tmp"),
                *self.out.glob(f".{EMBED_ERRORS_NAME}.*.tmp"),
                *self.out.glob(f".{EMBED_MANIFEST_NAME}.*.tmp"),
                *self.out.glob(f".{EMBED_FILE_STATS_NAME}.*.tmp"),
            ]
            if self.out.is_dir() and self.data.is_dir()
            else []
        )
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def parts(self) -> list[Path]:
        return sorted(p for p in self.data.glob("part-*.parquet") if _PART.match(p.name)) if self.data.is_dir() else []

    def index(self) -> dict[str, Done]:
        """id → the content hash and artifact of its latest row."""
        pq, done = parquet_module(), {}
        for part in self.parts():
            key = _artifact_key(pq.read_schema(part))
            table = pq.read_table(part, columns=["id", "sha256"])
            for item_id, sha in zip(table.column("id").to_pylist(), table.column("sha256").to_pylist()):
                done[item_id] = Done(sha, key)
        return done

    def write_chunk(
        self, ids: Sequence[str], kinds: Sequence[str], shas: Sequence[str], embeddings: np.ndarray, key: str
    ) -> Path:
        pa, pq = pyarrow_module("writing embeddings"), parquet_module()
        matrix = np.ascontiguousarray(embeddings, dtype=np.float32)
        dim = matrix.shape[1]
        flat = pa.array(matrix.reshape(-1), type=pa.float32())
        table = pa.table(
            [
                pa.array(list(ids), pa.string()),
                pa.array(list(kinds), pa.string()),
                pa.array(list(shas), pa.string()),
                pa.FixedSizeListArray.from_arrays(flat, dim),
            ],
            schema=_schema(dim, key),
        )
        existing = self.parts()
        number = int(_PART.match(existing[-1].name).group(1)) + 1 if existing else 0  # type: ignore[union-attr]
        path = self.data / f"part-{number:08d}.parquet"
        atomic_write_bytes(path, parquet_bytes(pq, table))
        return path

    def write_errors(self, errors: Sequence[tuple[str, str, str, str]]) -> None:
        """(id, kind, sha256, reason) rows of this run; no errors, no table."""
        path = self.out / EMBED_ERRORS_NAME
        if not errors:
            path.unlink(missing_ok=True)
            return
        pa = pyarrow_module("writing the errors table")
        columns = list(zip(*errors))
        table = pa.table(
            {
                name: pa.array(list(values), pa.string())
                for name, values in zip(("id", "kind", "sha256", "reason"), columns)
            }
        )
        atomic_write_bytes(path, parquet_bytes(parquet_module(), table))

    def compact(self, keep_keys: set[str] | None = None) -> int:
        """Rewrite chunks without rows a later chunk supersedes (and, given keep_keys, without rows
        of other artifacts); returns how many rows went. Each rewrite is atomic: a kill leaves every
        chunk whole, at worst with a row that the next compaction drops."""
        pq, parts = parquet_module(), self.parts()
        latest: dict[str, int] = {}
        for number, part in enumerate(parts):
            for item_id in pq.read_table(part, columns=["id"]).column("id").to_pylist():
                latest[item_id] = number
        dropped = 0
        for number, part in enumerate(parts):
            table = pq.read_table(part)
            stale_key = keep_keys is not None and _artifact_key(table.schema) not in keep_keys
            keep = np.array([not stale_key and latest[i] == number for i in table.column("id").to_pylist()], dtype=bool)
            if keep.all():
                continue
            dropped += int((~keep).sum())
            if keep.any():
                atomic_write_bytes(part, parquet_bytes(pq, table.filter(keep)))
            else:
                part.unlink()
        return dropped

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_text(self.out / EMBED_MANIFEST_NAME, json.dumps(to_jsonable(manifest), indent=2) + "\n")
        self.manifest = manifest


class ChunkWriter:
    """The rows an engine has embedded, in order, written in chunks of `chunk_rows` (what is left at
    the end) with the run's errors so far: the buffer both engines fill, so their chunks are alike."""

    def __init__(
        self,
        store: Store,
        key: str,
        chunk_rows: int,
        counts: dict[str, int] | None = None,
        errors: list[tuple[str, str, str, str]] | None = None,
    ) -> None:
        """`counts` and `errors` are the run's own (new ones when not given): the engines add to them as
        they go, and the run's summary reads them."""
        self.store, self.key, self.chunk_rows = store, key, chunk_rows
        self.counts = {"embedded": 0, "unchanged": 0, "chunks": 0} if counts is None else counts
        self.errors: list[tuple[str, str, str, str]] = [] if errors is None else errors
        self._ids: list[str] = []
        self._kinds: list[str] = []
        self._shas: list[str] = []
        self._vectors: list[np.ndarray] = []  # blocks of rows, in order

    def add(self, ids: Sequence[str], kinds: Sequence[str], shas: Sequence[str], vectors: np.ndarray) -> None:
        """Rows embedded together (one row of `vectors` each); whole chunks are written at once."""
        self._ids.extend(ids)
        self._kinds.extend(kinds)
        self._shas.extend(shas)
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        self.counts["embedded"] += len(ids)
        if len(self._ids) >= self.chunk_rows:
            self.flush(self.chunk_rows)

    def flush(self, limit: int | None = None) -> None:
        """Write chunks of `limit` rows while that many wait (every row when None), then the errors."""
        while self._ids and (limit is None or len(self._ids) >= limit):
            take = min(len(self._ids), limit or len(self._ids))
            vectors = np.concatenate(self._vectors)
            self.store.write_chunk(self._ids[:take], self._kinds[:take], self._shas[:take], vectors[:take], self.key)
            self.counts["chunks"] += 1
            for values in (self._ids, self._kinds, self._shas):
                del values[:take]
            self._vectors[:] = [vectors[take:]] if take < len(vectors) else []
        self.store.write_errors(self.errors)


def new_manifest(artifact: dict[str, Any], dim: int) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": now_iso(),
        "columns": list(COLUMNS),
        "embedding_dim": dim,
        "normalized": "l2",
        "artifact": artifact,
        "accepted": [],
        "runs": [],
    }


def read_embeddings(out: Path) -> Any:
    """The dataset as one pyarrow table (every chunk), for tests, docs and users."""
    pq, store = parquet_module(), Store(out)
    if store.manifest is None:
        raise ClipExportError(f"{out} is not an embeddings dataset (no {EMBED_MANIFEST_NAME})")
    pa = pyarrow_module("reading embeddings")
    tables = [pq.read_table(p) for p in store.parts()]
    return pa.concat_tables([t.replace_schema_metadata(None) for t in tables]) if tables else None


def _artifact_key(schema: Any) -> str:
    return (schema.metadata or {}).get(ARTIFACT_KEY, b"").decode()


def parquet_bytes(pq: Any, table: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()
