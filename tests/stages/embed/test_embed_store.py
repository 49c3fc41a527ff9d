"""The writer: whole chunks only, latest row wins, compaction, stale temporaries, foreign folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clip_export.core.errors import OutputError
from clip_export.core.spec import EMBED_DATA_DIR, EMBED_ERRORS_NAME, EMBED_FILE_STATS_NAME
from clip_export.stages.embed.embed_store import ChunkWriter, Store, new_manifest, read_embeddings


def vectors(n: int, value: float) -> np.ndarray:
    return np.full((n, 4), value, dtype=np.float32)


def test_later_chunks_supersede_earlier_rows_and_compaction_drops_them(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    store.write_manifest(new_manifest({"key": "a"}, 4))
    store.write_chunk(["x", "y"], ["image", "image"], ["s1", "s2"], vectors(2, 1.0), "a")
    store.write_chunk(["y"], ["image"], ["s3"], vectors(1, 2.0), "b")
    index = store.index()
    assert (index["x"].sha256, index["y"].sha256, index["y"].artifact_key) == ("s1", "s3", "b")
    assert store.compact() == 1
    rows = read_embeddings(tmp_path / "d").to_pylist()
    assert sorted((r["id"], r["sha256"]) for r in rows) == [("x", "s1"), ("y", "s3")]
    assert store.compact(keep_keys={"b"}) == 1  # rows of artifacts no longer accepted go too
    assert [r["id"] for r in read_embeddings(tmp_path / "d").to_pylist()] == ["y"]


def test_the_chunk_writer_writes_whole_chunks_in_order_and_the_rest_at_the_end(tmp_path: Path) -> None:
    """Both engines fill one ChunkWriter: rows from blocks of any size go out in chunks of chunk_rows,
    in the order they came, the remainder on flush, each write with the run's errors so far."""
    store = Store(tmp_path / "d")
    store.write_manifest(new_manifest({"key": "a"}, 4))
    counts = {"embedded": 0, "chunks": 0}
    errors = [("bad.png", "image", "s9", "truncated")]
    writer = ChunkWriter(store, "a", 3, counts, errors)
    writer.add(["p", "q"], ["image", "image"], ["s1", "s2"], vectors(2, 1.0))
    assert store.parts() == [] and counts == {"embedded": 2, "chunks": 0}
    writer.add(["r", "s", "t", "u", "v"], ["text"] * 5, ["s3", "s4", "s5", "s6", "s7"], vectors(5, 2.0))
    assert counts == {"embedded": 7, "chunks": 2} and len(store.parts()) == 2  # 3 + 3 written, 1 waiting
    assert (tmp_path / "d" / EMBED_ERRORS_NAME).exists()
    writer.flush()
    assert counts["chunks"] == 3
    rows = read_embeddings(tmp_path / "d").to_pylist()
    assert [r["id"] for r in rows] == ["p", "q", "r", "s", "t", "u", "v"]
    assert [r["embedding"][0] for r in rows] == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 2.0]


def test_a_killed_writes_temporary_is_removed_and_never_read(tmp_path: Path) -> None:
    store = Store(tmp_path / "d")
    store.write_manifest(new_manifest({"key": "a"}, 4))
    store.write_chunk(["x"], ["text"], ["s"], vectors(1, 1.0), "a")
    (tmp_path / "d" / EMBED_DATA_DIR / ".part-00000001.parquet.abc.tmp").write_bytes(b"PAR1 half")
    (tmp_path / "d" / f".{EMBED_FILE_STATS_NAME}.abc.tmp").write_bytes(b"PAR1 half")
    assert set(Store(tmp_path / "d").index()) == {"x"}
    assert store.remove_stale_temporaries() == 2
    assert not list((tmp_path / "d").rglob("*.tmp"))


def test_a_folder_of_other_files_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an embeddings dataset"):
        Store(tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        Store(tmp_path / "file")
