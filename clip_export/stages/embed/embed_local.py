"""The local engine of `clip-export embed`: one pool of threads, one per core, runs the inference
parts that are ready first and prepares the next items whenever none is, and the rows are written in
order.

Preparing is reading, hashing, decoding and preprocessing (or tokenizing). Inference splits each
batch into parts (at least one per worker, by default none over the rows that
embed_inputs.part_rows_by_kind allows the tower) and runs them on one ClipOnnx: onnxruntime's run()
is thread-safe and releases the GIL, so with one-thread sessions each thread keeps one core on its
own rows (as the Ray engine's one-thread actors do) and a small part's activations stay in that
core's cache. A part starts as soon as its rows are ready, not when
the whole batch is. With no more threads than cores, preparing fills the moments no part is ready
instead of taking a core from a running one. Side by side with reader threads beside inference
threads on a 2-core Zen 4 (benchmarks/embed_pool.py), INT8 photos ran 2-3% faster this way, fp32
captions 1-2.5% slower, the rest within 1% (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from functools import partial
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from clip_export.core.progress import Progress, items_progress
from clip_export.core.spec import EMBED_READ_THREADS
from clip_export.runtime.serving import ClipOnnx
from clip_export.stages.embed.embed_inputs import Item, Loaded, Prepared, part_slices, prepare
from clip_export.stages.embed.embed_store import ChunkWriter, Done


def parallelism(threads: int) -> tuple[int, int]:
    """(intra-op threads per session, parts run at once). By default one-thread sessions and one part
    per core this process may use; --threads N asks for N-thread sessions, one batch at a time."""
    if threads:
        return threads, 1
    usable = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)  # Linux only
    return 1, max(1, len(usable))


Result = TypeVar("Result")
Task = tuple[Callable[[], Any], Future[Any]]


class CorePool:
    """`threads` threads that run inference parts, at most `parts_at_once` at a time, before any item
    waiting to be prepared. A with-block's end stops them after what each is running; what is still
    queued is cancelled (the run is over, or failed)."""

    def __init__(self, threads: int, parts_at_once: int) -> None:
        self._parts: deque[Task] = deque()
        self._reads: deque[Task] = deque()
        self._running_parts, self._parts_at_once, self._stopping = 0, parts_at_once, False
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._serve, name=f"embed-{n}", daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], Result], part: bool) -> Future[Result]:
        future: Future[Result] = Future()
        with self._changed:
            (self._parts if part else self._reads).append((call, future))
            self._changed.notify()
        return future

    def _next(self) -> tuple[Task | None, bool]:
        """(the task this thread runs next, whether it is a part); (None, False) once stopping."""
        with self._changed:
            while True:
                if self._stopping:
                    return None, False
                if self._parts and self._running_parts < self._parts_at_once:
                    self._running_parts += 1
                    return self._parts.popleft(), True
                if self._reads:
                    return self._reads.popleft(), False
                self._changed.wait()

    def _serve(self) -> None:
        while True:
            task, part = self._next()
            if task is None:
                return
            call, future = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(call())
                except BaseException as exc:  # the caller's result() raises it
                    future.set_exception(exc)
            if part:
                with self._changed:
                    self._running_parts -= 1
                    self._changed.notify_all()  # a thread may be waiting for this part's turn

    def __enter__(self) -> CorePool:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        for _, future in (*self._parts, *self._reads):
            future.cancel()


def _prepare(model: ClipOnnx, item: Item, done: dict[str, Done], accepted: set[str]) -> Prepared:
    def unchanged(loaded: Loaded) -> bool:
        previous = done.get(item.id)
        return previous is not None and previous.sha256 == loaded.sha256 and previous.artifact_key in accepted

    return prepare(model, item, unchanged)


def _prefetched(
    pool: CorePool, work: Callable[[Item], Prepared], items: Sequence[Item], ahead: int
) -> Iterator[Prepared]:
    """work(item) for each item in order, with up to `ahead` items in flight on the pool."""
    pending: deque[Future[Prepared]] = deque()
    position = 0
    while position < len(items) or pending:
        while position < len(items) and len(pending) < ahead:
            pending.append(pool.submit(partial(work, items[position]), part=False))
            position += 1
        yield pending.popleft().result()


def run_local(
    model: ClipOnnx,
    items: Sequence[Item],
    done: dict[str, Done],
    accepted: set[str],
    writer: ChunkWriter,
    batch_size: int,
    progress: Progress,
    workers: int = 1,
    part_rows: Mapping[str, int] | None = None,
) -> None:
    """Embed `items` through `writer` (its store, artifact key, chunks, counts and errors), `workers`
    parts at a time (each at most `part_rows[kind]` rows when given), rows in the items' order."""
    counts, errors = writer.counts, writer.errors
    in_flight: deque[tuple[list[Prepared], Future[np.ndarray]]] = deque()  # parts, oldest first
    started, last = time.perf_counter(), 0.0

    def collect(keep: int) -> None:
        """Take the oldest parts' vectors, in order, until at most `keep` parts are in flight."""
        while len(in_flight) > keep:
            batch, running = in_flight.popleft()
            vectors = running.result()  # a failing session stops the run here, as it would inline
            writer.add(
                [p.loaded.item.id for p in batch],
                [p.loaded.item.kind for p in batch],
                [p.loaded.sha256 for p in batch],
                vectors,
            )

    def submit(rows: list[Prepared], pool: CorePool) -> None:
        """Run rows of one batch as one part, ahead of any preparing; this loop goes on meanwhile."""
        run = model.embed_pixels if rows[0].loaded.item.kind == "image" else model.embed_token_ids
        stacked = np.stack([p.array for p in rows])  # preprocessed or tokenized in the pool
        in_flight.append((rows, pool.submit(partial(run, stacked), part=True)))
        collect(keep=2 * workers)  # a part queued behind each running one (with --threads: one whole batch)

    if any(i.kind == "text" for i in items):
        model.load_tokenizer()  # one clear error now, not one per caption in the workers
    # A thread per part run at once, and at least EMBED_READ_THREADS: with --threads N (one N-thread batch
    # at a time) the others prepare
    with CorePool(max(workers, EMBED_READ_THREADS), parts_at_once=workers) as pool:
        for kind in ("image", "text"):
            group = [i for i in items if i.kind == kind]
            most_rows = part_rows[kind] if part_rows else None
            # Where each part of a full batch ends: a part starts as soon as its rows are ready, so
            # inference is not held up while the rest of the batch is prepared.
            part_ends = {part.stop for part in part_slices(batch_size, workers, most_rows)}
            batch: list[Prepared] = []
            sent = 0  # rows of `batch` already running
            ahead = 2 * max(batch_size, workers)  # the batch being gathered and the next; not more per core
            work = _prefetched(pool, lambda item: _prepare(model, item, done, accepted), group, ahead)
            for position, prepared in enumerate(work):
                if prepared.skip:
                    counts["unchanged"] += 1
                elif prepared.loaded.error is not None:
                    errors.append((prepared.loaded.item.id, kind, prepared.loaded.sha256, prepared.loaded.error))
                else:
                    batch.append(prepared)
                    left = len(group) - position - 1
                    if len(batch) == batch_size:
                        submit(batch[sent:], pool)
                        batch, sent = [], 0
                    elif len(batch) in part_ends and len(batch) + left >= batch_size:
                        submit(batch[sent:], pool)  # a part of a batch that can still fill: start it now
                        sent = len(batch)
                now = time.perf_counter()
                if now - last >= 1.0:
                    last = now
                    progress(items_progress(counts, len(errors), len(items), now - started))
            rest = batch[sent:]  # the short last batch: what is not running yet, split evenly
            for part in part_slices(len(rest), workers, most_rows):
                submit(rest[part], pool)
        collect(keep=0)
    writer.flush()
