"""The local engine: batches run at once keep the rows in order and equal to one batch at a time, and its
pool runs the parts that are ready before any preparing."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import BUNDLED_DIR
from clip_export.core.progress import silent
from clip_export.runtime import ClipOnnx
from clip_export.stages.embed import embed_local
from clip_export.stages.embed.embed import artifact_record
from clip_export.stages.embed.embed_inputs import in_batching_order, list_items
from clip_export.stages.embed.embed_local import CorePool, parallelism, run_local
from clip_export.stages.embed.embed_store import ChunkWriter, Store, new_manifest, read_embeddings


def test_by_default_sessions_have_one_thread_and_one_part_runs_per_usable_core(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert parallelism(0) == (1, 3)  # the cores this process may use, not the machine's
    assert parallelism(4) == (4, 1)  # --threads 4: four-thread sessions, whole batches one at a time
    monkeypatch.delattr(os, "sched_getaffinity")  # macOS and Windows have no affinity call
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert parallelism(0) == (1, 6)


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((BUNDLED_DIR / "images").iterdir())[:9]:
        shutil.copy(path, folder / path.name)
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\na cup of coffee on a table\nthe moon\na rocket at launch\n", encoding="utf-8")
    return [folder, captions]


def run(
    model: ClipOnnx,
    inputs: list[Path],
    out: Path,
    workers: int,
    batch_size: int = 2,
    part_rows: dict[str, int] | None = None,
) -> dict[str, int]:
    store = Store(out)
    record = artifact_record(model, "fp32")
    store.write_manifest(new_manifest(record, 0))
    items = in_batching_order(list_items(inputs))
    writer = ChunkWriter(store, record["key"], 4)
    run_local(model, items, {}, {record["key"]}, writer, batch_size, silent, workers=workers, part_rows=part_rows)
    return writer.counts


def test_the_pool_runs_a_part_before_the_items_queued_ahead_of_it_to_be_prepared() -> None:
    """With every thread busy, a part submitted after items to prepare runs first: preparing fills the
    moments no part is ready, never holds one back."""
    started, release, ran = threading.Event(), threading.Event(), []

    def busy() -> None:
        started.set()
        release.wait(timeout=60)

    with CorePool(1, parts_at_once=1) as pool:
        pool.submit(busy, part=False)
        assert started.wait(timeout=60)  # the only thread is taken: what follows queues
        queued = [
            pool.submit(lambda: ran.append("read a"), part=False),
            pool.submit(lambda: ran.append("read b"), part=False),
            pool.submit(lambda: ran.append("part"), part=True),
        ]
        release.set()
        for future in queued:
            future.result(timeout=60)
    assert ran == ["part", "read a", "read b"]


def test_the_pool_runs_no_more_parts_at_once_than_asked_and_prepares_meanwhile() -> None:
    """--threads N runs one N-thread batch at a time: the pool's other thread prepares meanwhile and
    does not start the next batch beside it."""
    started, read_ran, order = threading.Event(), threading.Event(), []

    def first_part() -> None:
        order.append("part 1")
        started.set()
        read_ran.wait(timeout=60)
        order.append("part 1 done")

    def read() -> None:
        order.append("read")
        read_ran.set()

    with CorePool(2, parts_at_once=1) as pool:
        queued = [pool.submit(first_part, part=True)]
        assert started.wait(timeout=60)
        queued += [pool.submit(lambda: order.append("part 2"), part=True), pool.submit(read, part=False)]
        for future in queued:
            future.result(timeout=60)
    assert order == ["part 1", "read", "part 1 done", "part 2"]


def test_leaving_the_pool_stops_its_threads_and_cancels_what_is_still_queued() -> None:
    """A run that fails stops at once: items read ahead are not prepared after the with-block ends."""
    started, ran = threading.Event(), []

    def busy() -> None:
        started.set()
        deadline = time.monotonic() + 60
        while not pool._stopping and time.monotonic() < deadline:  # still running when the with-block ends
            time.sleep(0.01)
        ran.append("busy")  # it finishes; what is queued behind it does not run

    with CorePool(1, parts_at_once=1) as pool:
        pool.submit(busy, part=False)
        assert started.wait(timeout=60)
        queued = pool.submit(lambda: ran.append("queued"), part=False)
        threads = list(pool._threads)
    assert ran == ["busy"] and queued.cancelled()
    assert not any(thread.is_alive() for thread in threads)


def test_an_error_in_the_pool_reaches_whoever_waits_for_it() -> None:
    def failing() -> None:
        raise ClipExportError("this part failed")

    with CorePool(2, parts_at_once=2) as pool:
        future = pool.submit(failing, part=True)
        with pytest.raises(ClipExportError, match="this part failed"):
            future.result(timeout=60)


def test_batches_run_at_once_write_the_rows_of_one_batch_at_a_time_in_order(
    tiny_vit_int8_dir: Path, inputs: list[Path], tmp_path: Path
) -> None:
    one = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32", threads=2)
    many = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32", threads=1)
    assert run(one, inputs, tmp_path / "one", workers=1) == {"embedded": 13, "unchanged": 0, "chunks": 4}
    assert run(many, inputs, tmp_path / "many", workers=3) == {"embedded": 13, "unchanged": 0, "chunks": 4}
    expected, got = (read_embeddings(tmp_path / name).to_pylist() for name in ("one", "many"))
    order = [item.id for item in in_batching_order(list_items(inputs))]
    assert [row["id"] for row in got] == [row["id"] for row in expected] == order
    np.testing.assert_allclose(
        np.array([row["embedding"] for row in got]), np.array([row["embedding"] for row in expected]), atol=1e-5
    )


def test_a_session_that_fails_in_a_worker_stops_the_run_with_its_error(
    tiny_vit_int8_dir: Path, inputs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32", threads=1)
    calls, lock = [], threading.Lock()

    def failing_after_the_first_part(pixels: np.ndarray) -> np.ndarray:
        with lock:  # the workers call this concurrently: the first call in passes, every later one fails
            calls.append(len(pixels))
            first = len(calls) == 1
        if not first:
            raise ClipExportError("the session failed on a later part")
        return np.zeros((len(pixels), 8), np.float32)

    monkeypatch.setattr(model, "embed_pixels", failing_after_the_first_part)
    with pytest.raises(ClipExportError, match="the session failed on a later part"):
        run(model, inputs, tmp_path / "index", workers=2)
    assert not list((tmp_path / "index").rglob("part-*.parquet"))  # no chunk was complete


def test_each_batch_runs_as_one_part_per_worker(tiny_vit_int8_dir: Path, inputs: list[Path], tmp_path: Path) -> None:
    model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32", threads=1)
    original, parts = model.embed_pixels, []

    def recording(pixels: np.ndarray) -> np.ndarray:
        parts.append(len(pixels))  # list.append is atomic: the workers call this concurrently
        return original(pixels)

    model.embed_pixels = recording  # type: ignore[method-assign]
    run(model, inputs, tmp_path / "index", workers=2, batch_size=5)
    assert sorted(parts) == [2, 2, 2, 3]  # 9 photos: batches of 5 and 4, each in two parts


def test_a_part_starts_while_the_rest_of_its_batch_is_still_prepared(
    tiny_vit_int8_dir: Path, inputs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last photo of the only batch is held back until a part has started: without parts that
    start as soon as their rows are ready, nothing would run before the whole batch is read."""
    model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32", threads=1)
    photos = sorted((inputs[0]).iterdir())
    part_started, waited = threading.Event(), []
    original_run, original_prepare = model.embed_pixels, embed_local.prepare

    def recording(pixels: np.ndarray) -> np.ndarray:
        part_started.set()
        return original_run(pixels)

    def holding_the_last_photo(model: ClipOnnx, item: Any, unchanged: Any) -> Any:
        if item.path == str(photos[-1]):
            waited.append(part_started.wait(timeout=60))
        return original_prepare(model, item, unchanged)

    model.embed_pixels = recording  # type: ignore[method-assign]
    monkeypatch.setattr(embed_local, "prepare", holding_the_last_photo)
    counts = run(model, [inputs[0]], tmp_path / "index", workers=2, batch_size=9, part_rows={"image": 3, "text": 3})
    assert waited == [True] and counts["embedded"] == 9
