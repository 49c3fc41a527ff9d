"""The stat shortcut of embed re-runs: which files are not read, and which entries are recorded."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path

import pytest

from clip_export.core.spec import EMBED_FILE_STATS_NAME, EMBED_FILE_STATS_SETTLE_S
from clip_export.stages.embed.embed_filestats import (
    Entry,
    FileStat,
    read_entries,
    record_entries,
    skip_unchanged_files,
)
from clip_export.stages.embed.embed_inputs import Item
from clip_export.stages.embed.embed_store import Done

KEY = "artifact-key"
AN_HOUR_AGO_NS = time.time_ns() - 3600 * 10**9


def photo(folder: Path, name: str, content: bytes, mtime_ns: int = AN_HOUR_AGO_NS) -> tuple[Item, str]:
    path = folder / name
    path.write_bytes(content)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return Item(str(path), "image", path=str(path)), hashlib.sha256(content).hexdigest()


def entry(item: Item, sha256: str, **changed: int) -> Entry:
    """The entry a run records for the file as it is now, with the fields in `changed` replaced."""
    found = os.stat(item.path or "")
    now = Entry(found.st_size, found.st_mtime_ns, found.st_ctime_ns, found.st_ino, sha256)
    return dataclasses.replace(now, **changed)


def test_only_a_file_whose_stat_matches_its_entry_and_whose_row_holds_the_entrys_hash_is_not_read(
    tmp_path: Path,
) -> None:
    same, sha = photo(tmp_path, "same.jpg", b"same")
    touched, touched_sha = photo(tmp_path, "touched.jpg", b"touched")
    resized, resized_sha = photo(tmp_path, "resized.jpg", b"resized")
    re_embedded, _ = photo(tmp_path, "re-embedded.jpg", b"re-embedded")
    other_artifact, other_sha = photo(tmp_path, "other-artifact.jpg", b"other")
    no_entry, no_entry_sha = photo(tmp_path, "no-entry.jpg", b"no entry")
    no_row, no_row_sha = photo(tmp_path, "no-row.jpg", b"no row")
    ctime_changed, ctime_sha = photo(tmp_path, "ctime-changed.jpg", b"ctime")
    other_inode, other_inode_sha = photo(tmp_path, "other-inode.jpg", b"inode")
    caption = Item("a caption", "text", text="a caption")
    from_table = Item("row-1", "image", data=b"encoded")
    missing = Item(str(tmp_path / "missing.jpg"), "image", path=str(tmp_path / "missing.jpg"))
    files = [same, touched, resized, re_embedded, other_artifact, no_entry, no_row, ctime_changed, other_inode]
    items = [*files, caption, from_table, missing]
    before_rewrite = entry(ctime_changed, ctime_sha)
    time.sleep(0.01)  # past the file system's timestamp tick (ns on ext4 and tmpfs, coarse-clock updates)
    photo(tmp_path, "ctime-changed.jpg", b"CTIME")  # rewritten: same size, mtime put back, a new ctime
    assert os.stat(ctime_changed.path or "").st_ctime_ns != before_rewrite.ctime_ns
    entries = {
        same.id: entry(same, sha),
        touched.id: entry(touched, touched_sha, mtime_ns=AN_HOUR_AGO_NS - 1),  # mtime 1 ns earlier
        resized.id: entry(resized, resized_sha, size=8),  # one byte longer
        other_inode.id: entry(other_inode, other_inode_sha, inode=os.stat(same.path or "").st_ino),
        re_embedded.id: entry(re_embedded, "an older hash"),
        other_artifact.id: entry(other_artifact, other_sha),
        no_row.id: entry(no_row, no_row_sha),
        ctime_changed.id: before_rewrite,
    }
    done = {
        same.id: Done(sha, KEY),
        touched.id: Done(touched_sha, KEY),
        resized.id: Done(resized_sha, KEY),
        re_embedded.id: Done("its latest row's hash", KEY),
        other_artifact.id: Done(other_sha, "another artifact"),
        no_entry.id: Done(no_entry_sha, KEY),
        ctime_changed.id: Done(ctime_sha, KEY),
        other_inode.id: Done(other_inode_sha, KEY),
    }
    unread = skip_unchanged_files(items, entries, done, {KEY})
    assert unread.skipped == 1
    assert unread.pending == [i for i in items if i is not same]
    assert set(unread.seen) == {i.id for i in files}  # image files that exist: nothing else is statted
    assert unread.seen[same.id].size == 4 and unread.seen[same.id].mtime_ns == AN_HOUR_AGO_NS
    assert skip_unchanged_files(items, {}, done, {KEY}).skipped == 0  # --rehash: no entries, every file read


def test_entries_are_recorded_for_settled_files_whose_row_is_accepted_and_did_not_fail(tmp_path: Path) -> None:
    now = time.time_ns()
    settled_ns = now - int(EMBED_FILE_STATS_SETTLE_S * 1e9)  # exactly the margin: not yet settled
    settled = FileStat(4, settled_ns - 5, settled_ns - 1, 77, now)
    just_written = FileStat(4, settled_ns, settled_ns, 78, now)
    mtime_put_back = FileStat(4, settled_ns - 5, settled_ns, 79, now)  # an old mtime, a recent ctime
    seen = {
        "ok": settled,
        "recent": just_written,
        "put-back": mtime_put_back,
        "failed": settled,
        "no-row": settled,
        "other": settled,
    }
    done = {
        "ok": Done("ok-sha", KEY),
        "recent": Done("recent-sha", KEY),
        "put-back": Done("put-back-sha", KEY),
        "failed": Done("an earlier row's hash", KEY),
        "other": Done("other-sha", "another artifact"),
        "unseen-kept": Done("kept-sha", KEY),
        "unseen-superseded": Done("a newer hash", KEY),
    }
    done["unseen-failed"] = Done("its old row's hash", KEY)
    earlier = {
        "ok": Entry(3, 1, 1, 1, "an older hash"),
        "failed": Entry(4, 2, 2, 2, "an earlier row's hash"),
        "unseen-kept": Entry(9, 9, 9, 9, "kept-sha"),
        "unseen-superseded": Entry(9, 9, 9, 9, "the hash before"),
        "unseen-gone": Entry(9, 9, 9, 9, "gone-sha"),
        "unseen-failed": Entry(9, 9, 9, 9, "its old row's hash"),  # it could not be statted this time
    }
    written, problem = record_entries(tmp_path, earlier, seen, done, {KEY}, failed={"failed", "unseen-failed"})
    assert problem is None
    assert written == {
        "ok": Entry(4, settled.mtime_ns, settled.ctime_ns, 77, "ok-sha"),
        "unseen-kept": Entry(9, 9, 9, 9, "kept-sha"),
    }
    assert read_entries(tmp_path) == (written, None)
    assert record_entries(tmp_path, {}, {}, done, {KEY}, failed=set()) == ({}, None)
    assert not (tmp_path / EMBED_FILE_STATS_NAME).exists()  # nothing to keep: no file
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    unwritten, why = record_entries(not_a_folder, {}, {"ok": settled}, done, {KEY}, failed=set())
    assert unwritten == {} and why is not None
    assert why.startswith(f"{not_a_folder / EMBED_FILE_STATS_NAME} could not be written (")
    assert why.endswith("); the next run reads every file")


def test_an_unreadable_or_foreign_stats_file_means_reading_every_file_and_says_so(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / EMBED_FILE_STATS_NAME
    assert read_entries(tmp_path) == ({}, None)
    path.write_bytes(b"not parquet")
    entries, why = read_entries(tmp_path)
    assert entries == {}
    assert why is not None and why.startswith(f"{path} cannot be read (")
    assert why.endswith("; every file is read and hashed")
    text_times = {name: pa.array(["1"]) for name in ("id", "size", "mtime_ns", "ctime_ns", "inode", "sha256")}
    pq.write_table(pa.table(text_times), path)  # the right names, other types
    assert read_entries(tmp_path) == (
        {},
        f"{path} has columns ['id', 'size', 'mtime_ns', 'ctime_ns', 'inode', 'sha256'] of other types; "
        "every file is read and hashed",
    )


@pytest.mark.parametrize("field", ["size", "mtime_ns", "ctime_ns", "inode"])
def test_any_one_stat_field_that_differs_from_the_entry_means_reading_the_file(tmp_path: Path, field: str) -> None:
    item, sha = photo(tmp_path, "photo.jpg", b"first")
    done = {item.id: Done(sha, KEY)}
    assert skip_unchanged_files([item], {item.id: entry(item, sha)}, done, {KEY}).skipped == 1
    off_by_one = entry(item, sha, **{field: getattr(entry(item, sha), field) + 1})
    assert skip_unchanged_files([item], {item.id: off_by_one}, done, {KEY}).pending == [item]
