"""Re-runs that skip unchanged files without reading them: each file's size, modification time, inode
change time and inode number, as last seen, beside the content hash its row was made from
(OUT/EMBED_FILE_STATS_NAME).

Why: otherwise a re-run reads and hashes every file to find what changed, and a photo library of a
million files is terabytes of reading. A file whose size, mtime, ctime (in ns) and inode equal the
entry recorded with the hash its row still holds is taken as unchanged, as git takes it. The ctime is
what catches a file rewritten with its mtime put back (`touch -r`, some copy and sync tools): on
POSIX file systems user tools cannot set it. The inode catches a path that now names another file
(a symlink pointed elsewhere, a file renamed over it). `--rehash` reads and hashes every file
instead. Only image files on disk have entries: captions and image bytes in tables are in memory
already and are hashed as before.

What keeps the shortcut honest:
- an entry is recorded from a stat taken before the file was read, so a file changed while it was
  read carries a newer ctime than its entry and is read again next time;
- a file whose mtime or ctime is not more than EMBED_FILE_STATS_SETTLE_S older than the clock read
  before that stat gets no entry: changed again within its file system's timestamp resolution, it
  could keep its size and both times (git's "racily clean" files);
- an entry counts only while its hash is the hash of the item's row in the index, made by an
  artifact this dataset accepts; an item that failed loses its entry.
The file is an accelerator: missing, unreadable or from an interrupted run, it costs reading, never a
wrong skip of a file whose size, times or inode changed. Where the file system's times cannot be
trusted (FAT and exFAT keep no inode change time; network mounts may cache a stat), use --rehash.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.manifest import atomic_write_bytes
from clip_export.core.spec import EMBED_FILE_STATS_NAME, EMBED_FILE_STATS_SETTLE_S
from clip_export.stages.embed.embed_inputs import Item, pyarrow_module
from clip_export.stages.embed.embed_store import Done, parquet_bytes, parquet_module

STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode")
COLUMNS = ("id", *STAT_FIELDS, "sha256")


@dataclass(frozen=True)
class FileStat:
    """A file as a stat saw it, and the wall clock read just before that stat."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    seen_ns: int

    def same(self, entry: Entry) -> bool:
        return all(getattr(self, name) == getattr(entry, name) for name in STAT_FIELDS)

    def settled(self, settle_ns: int) -> bool:
        """Whether neither time is within `settle_ns` of the stat: see the module's docstring."""
        return self.seen_ns - max(self.mtime_ns, self.ctime_ns) > settle_ns


@dataclass(frozen=True)
class Entry:
    """What a run recorded for a file: its stat then, and the hash of the content its row was made from."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
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
    if not table.schema.equals(_schema()):  # written by something else: its values are not ours to trust
        return {}, f"{path} has columns {table.schema.names} of other types; every file is read and hashed"
    rows = zip(*(table.column(name).to_pylist() for name in COLUMNS))
    return {item_id: Entry(*stat) for item_id, *stat in rows}, None


def _schema() -> Any:
    pa = pyarrow_module("the file stats")
    return pa.schema([(name, pa.string() if name in ("id", "sha256") else pa.int64()) for name in COLUMNS])


def _stat(path: str) -> FileStat | None:
    """The file's stat (following symlinks, as reading does), or None where the engine will say why."""
    before = time.time_ns()  # before the stat: a change after it has a later time than this
    try:
        found = os.stat(path)
    except OSError:
        return None
    return FileStat(found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino, before)


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
) -> tuple[dict[str, Entry], str | None]:
    """After a run: this run's stats beside the hashes its rows now hold, with the earlier entries of
    files not seen this time, written atomically. (what was written, why nothing could be, or None):
    a file that cannot be written costs the next run its reading, not this run its rows."""
    settle_ns = int(EMBED_FILE_STATS_SETTLE_S * 1e9)
    kept = {
        item_id: entry
        for item_id, entry in entries.items()
        if item_id not in seen and item_id not in failed and item_id in done and done[item_id].sha256 == entry.sha256
    }
    for item_id, found in seen.items():
        row = done.get(item_id)
        if item_id not in failed and row is not None and row.artifact_key in accepted and found.settled(settle_ns):
            kept[item_id] = Entry(found.size, found.mtime_ns, found.ctime_ns, found.inode, row.sha256)
    path = Path(out) / EMBED_FILE_STATS_NAME
    ids = sorted(kept)
    try:
        if not kept:
            path.unlink(missing_ok=True)
            return kept, None
        pa = pyarrow_module("writing the file stats")
        columns = {"id": ids, **{name: [getattr(kept[i], name) for i in ids] for name in (*STAT_FIELDS, "sha256")}}
        table = pa.table(columns, schema=_schema())
        atomic_write_bytes(path, parquet_bytes(parquet_module(), table))
    except OSError as exc:
        return {}, f"{path} could not be written ({exc.strerror or exc}); the next run reads every file"
    return kept, None
