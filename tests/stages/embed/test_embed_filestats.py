"""The stat shortcut of embed re-runs: which files are not read, and which entries are recorded."""

from __future__ import annotations

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
    caption = Item("a caption", "text", text="a caption")
    from_table = Item("row-1", "image", data=b"encoded")
    missing = Item(str(tmp_path / "missing.jpg"), "image", path=str(tmp_path / "missing.jpg"))
    items = [same, touched, resized, re_embedded, other_artifact, no_entry, no_row, caption, from_table, missing]
    entries = {
        same.id: Entry(4, AN_HOUR_AGO_NS, sha),
        touched.id: Entry(7, AN_HOUR_AGO_NS - 1, touched_sha),  # mtime 1 ns earlier
        resized.id: Entry(8, AN_HOUR_AGO_NS, resized_sha),  # one byte longer
        re_embedded.id: Entry(11, AN_HOUR_AGO_NS, "an older hash"),
        other_artifact.id: Entry(5, AN_HOUR_AGO_NS, other_sha),
        no_row.id: Entry(6, AN_HOUR_AGO_NS, no_row_sha),
    }
    done = {
        same.id: Done(sha, KEY),
        touched.id: Done(touched_sha, KEY),
        resized.id: Done(resized_sha, KEY),
        re_embedded.id: Done("its latest row's hash", KEY),
        other_artifact.id: Done(other_sha, "another artifact"),
        no_entry.id: Done(no_entry_sha, KEY),
    }
    unread = skip_unchanged_files(items, entries, done, {KEY})
    assert unread.skipped == 1
    assert unread.pending == [i for i in items if i is not same]
    assert set(unread.seen) == {i.id for i in items[:7]}  # image files that exist: nothing else is statted
    assert unread.seen[same.id].size == 4 and unread.seen[same.id].mtime_ns == AN_HOUR_AGO_NS
    assert skip_unchanged_files(items, {}, done, {KEY}).skipped == 0  # --rehash: no entries, every file read


def test_entries_are_recorded_for_settled_files_whose_row_is_accepted_and_did_not_fail(tmp_path: Path) -> None:
    now = time.time_ns()
    settled = FileStat(4, now - int(EMBED_FILE_STATS_SETTLE_S * 1e9), now)
    just_written = FileStat(4, now - int(EMBED_FILE_STATS_SETTLE_S * 1e9) + 1, now)
    seen = {"ok": settled, "recent": just_written, "failed": settled, "no-row": settled, "other": settled}
    done = {
        "ok": Done("ok-sha", KEY),
        "recent": Done("recent-sha", KEY),
        "failed": Done("an earlier row's hash", KEY),
        "other": Done("other-sha", "another artifact"),
        "unseen-kept": Done("kept-sha", KEY),
        "unseen-superseded": Done("a newer hash", KEY),
    }
    earlier = {
        "ok": Entry(3, 1, "an older hash"),
        "failed": Entry(4, 2, "an earlier row's hash"),
        "unseen-kept": Entry(9, 9, "kept-sha"),
        "unseen-superseded": Entry(9, 9, "the hash before"),
        "unseen-gone": Entry(9, 9, "gone-sha"),
    }
    written = record_entries(tmp_path, earlier, seen, done, {KEY}, failed={"failed"})
    assert written == {"ok": Entry(4, settled.mtime_ns, "ok-sha"), "unseen-kept": Entry(9, 9, "kept-sha")}
    assert read_entries(tmp_path) == (written, None)
    assert record_entries(tmp_path, {}, {}, done, {KEY}, failed=set()) == {}
    assert not (tmp_path / EMBED_FILE_STATS_NAME).exists()  # nothing to keep: no file


def test_an_unreadable_stats_file_means_reading_every_file_and_says_so(tmp_path: Path) -> None:
    assert read_entries(tmp_path) == ({}, None)
    (tmp_path / EMBED_FILE_STATS_NAME).write_bytes(b"not parquet")
    entries, why = read_entries(tmp_path)
    assert entries == {}
    assert why is not None and why.startswith(f"{tmp_path / EMBED_FILE_STATS_NAME} cannot be read (")
    assert why.endswith("; every file is read and hashed")


@pytest.mark.parametrize("change", ["content and size", "mtime only"])
def test_a_file_changed_after_its_entry_is_read_again(tmp_path: Path, change: str) -> None:
    item, sha = photo(tmp_path, "photo.jpg", b"first")
    entries = {item.id: Entry(5, AN_HOUR_AGO_NS, sha)}
    done = {item.id: Done(sha, KEY)}
    assert skip_unchanged_files([item], entries, done, {KEY}).skipped == 1
    if change == "content and size":
        photo(tmp_path, "photo.jpg", b"second!", AN_HOUR_AGO_NS)
    else:
        os.utime(item.path or "", ns=(AN_HOUR_AGO_NS + 10**9, AN_HOUR_AGO_NS + 10**9))
    assert skip_unchanged_files([item], entries, done, {KEY}).pending == [item]
