"""Re-runs that skip unchanged files without reading them: each file's size, modification time and
inode change time, as last seen, beside the content hash its row was made from
(OUT/EMBED_FILE_STATS_NAME).

Why: otherwise a re-run reads and hashes every file to find what changed, and a photo library of a
million files is terabytes of reading. A file whose size, mtime and ctime (in ns) equal the entry
recorded with the hash its row still holds is taken as unchanged, as git takes it. The ctime is what
catches a file rewritten with its mtime put back (`touch -r`, some copy and sync tools): user tools
cannot set it. `--rehash` reads and hashes every file instead. Only image files have entries:
captions and table rows are in memory already and are hashed as before.

What keeps the shortcut honest:
- an entry is recorded from a stat taken before the file was read, so a file changed while it was
  read carries a newer mtime than its entry and is read again next time;
- a file modified (mtime or ctime) less than EMBED_FILE_STATS_SETTLE_S before that stat gets no
  entry: changed again within its file system's timestamp resolution, it could keep its size and
  both times (git's "racily clean" files);
- an entry counts only while its hash is the hash of the item's row in the index, made by an
  artifact this dataset accepts; a failed item loses its entry.
The file is an accelerator: lost, stale or from an interrupted run, it costs reading, never a wrong
skip of a file whose size, mtime or ctime changed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from clip_export.core.manifest import atomic_write_bytes
from clip_export.core.spec import EMBED_FILE_STATS_NAME, EMBED_FILE_STATS_SETTLE_S
from clip_export.stages.embed.embed_inputs import Item, pyarrow_module
from clip_export.stages.embed.embed_store import Done, parquet_bytes, parquet_module

COLUMNS = ("id", "size", "mtime_ns", "ctime_ns", "sha256")


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime_ns: int
    ctime_ns: int
    seen_ns: int  # when it was taken (wall clock), before the file was read

    def same(self, entry: Entry) -> bool:
        return (self.size, self.mtime_ns, self.ctime_ns) == (entry.size, entry.mtime_ns, entry.ctime_ns)


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str


@dataclass(frozen=True)
class Unread:
    """The items left to read, how many were taken as unchanged from their stat alone, and the stat of
    every image file (for the entries recorded after the run)."""

    pending: list[Item]
    skipped: int
    seen: dict[str, FileStat]


def read_entries(out: Path) -> tuple[dict[str, Entry], str | None]:
    """The entries of the last runs, and why none could be read where the file is there but unreadable
    (an accelerator only: every file is then read and hashed, and the file rewritten)."""
    path = Path(out) / EMBED_FILE_STATS_NAME
    if not path.exists():
        return {}, None
    try:
        table = parquet_module().read_table(path, columns=list(COLUMNS))
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, KeyError...
        return {}, f"{path} cannot be read ({type(exc).__name__}: {exc}); every file is read and hashed"
    rows = zip(*(table.column(name).to_pylist() for name in COLUMNS))
    return {item_id: Entry(*stat) for item_id, *stat in rows}, None


def _stat(path: str) -> FileStat | None:
    try:
        found = os.stat(path)
    except OSError:  # the engine reads it and reports why it cannot
        return None
    return FileStat(found.st_size, found.st_mtime_ns, found.st_ctime_ns, time.time_ns())


def skip_unchanged_files(
    items: Sequence[Item], entries: Mapping[str, Entry], done: Mapping[str, Done], accepted: Collection[str]
) -> Unread:
    """Stat every image file; those whose entry matches and whose row still holds the entry's hash
    (by an accepted artifact) are not read. Pass no entries to read every file (--rehash)."""
    pending: list[Item] = []
    seen: dict[str, FileStat] = {}
    skipped = 0
    for item in items:
        found = _stat(item.path) if item.path is not None else None
        if found is None:
            pending.append(item)
            continue
        seen[item.id] = found
        entry, row = entries.get(item.id), done.get(item.id)
        if (
            entry is not None
            and row is not None
            and row.artifact_key in accepted
            and found.same(entry)
            and entry.sha256 == row.sha256
        ):
            skipped += 1
        else:
            pending.append(item)
    return Unread(pending, skipped, seen)


def record_entries(
    out: Path,
    entries: Mapping[str, Entry],
    seen: Mapping[str, FileStat],
    done: Mapping[str, Done],
    accepted: Collection[str],
    failed: Collection[str],
) -> dict[str, Entry]:
    """After a run: this run's stats beside the hashes its rows now hold, with the earlier entries of
    files not seen this time; written atomically. Returns what was written."""
    settle_ns = int(EMBED_FILE_STATS_SETTLE_S * 1e9)
    kept = {
        item_id: entry
        for item_id, entry in entries.items()
        if item_id not in seen and item_id in done and done[item_id].sha256 == entry.sha256
    }
    for item_id, found in seen.items():
        row = done.get(item_id)
        if (
            item_id not in failed
            and row is not None
            and row.artifact_key in accepted
            and found.seen_ns - max(found.mtime_ns, found.ctime_ns) >= settle_ns
        ):
            kept[item_id] = Entry(found.size, found.mtime_ns, found.ctime_ns, row.sha256)
    path = Path(out) / EMBED_FILE_STATS_NAME
    if not kept:
        path.unlink(missing_ok=True)
        return kept
    pa = pyarrow_module("writing the file stats")
    ids = sorted(kept)
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "size": pa.array([kept[i].size for i in ids], pa.int64()),
            "mtime_ns": pa.array([kept[i].mtime_ns for i in ids], pa.int64()),
            "ctime_ns": pa.array([kept[i].ctime_ns for i in ids], pa.int64()),
            "sha256": pa.array([kept[i].sha256 for i in ids], pa.string()),
        }
    )
    atomic_write_bytes(path, parquet_bytes(parquet_module(), table))
    return kept
