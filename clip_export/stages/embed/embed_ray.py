"""The Ray engine of `clip-export embed --ray [ADDRESS]`: the same job on Ray Data, past one machine.

read (the items, as a Ray dataset) → map_batches with an actor pool (each actor opens one ClipOnnx:
one runtime session per tower, with its own thread count, taking the driver's serve-time check
where its environment is the driver's, and does the reading, hashing and preprocessing of its
batches) → the driver streams the results into the same writer the local engine uses (embed_store:
atomic Parquet chunks, the same schema and manifest). Ray schedules, retries and restarts; there is
no scheduler of ours. A worker killed mid-job is restarted by Ray and its batch re-run (Ray Data's
actor pools default to max_restarts=-1 and max_task_retries=-1), so nothing is lost:
tests/stages/embed/test_embed_ray.py kills one by pid.

Imported only for --ray; without Ray the error names the extra `clip-export[ray]`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.errors import import_optional
from clip_export.core.progress import Progress, items_progress
from clip_export.stages.embed.embed_inputs import Item, part_rows_by_kind, part_slices, prepare
from clip_export.stages.embed.embed_store import ChunkWriter

PACKAGE_PARENT = str(Path(__file__).resolve().parents[3])
# Text cells cannot be null in one Arrow column with strings elsewhere: "" and b"" stand for none.
FIELDS = ("id", "kind", "path", "data", "text")


@dataclass(frozen=True)
class ActorJob:
    """What every actor is built from, declared once: run_ray hands it to Ray, which sends it to each
    actor, and a test builds the same actor from the same job."""

    source: str  # the export or release, as an absolute path (actors may not share the driver's cwd)
    precision: str
    threads: int = 1  # each actor's session threads
    done: Mapping[str, str] = field(default_factory=dict)  # item id -> sha256 already embedded
    towers: tuple[str, ...] = ()  # the towers the items need; () opens both
    passed_checks: Mapping[str, str] = field(default_factory=dict)  # the driver's serve-time passes
    part_rows: Mapping[str, int] | None = None  # the most rows a part runs, per kind; None: the release's


class EmbedMapper:
    """One actor: one ClipOnnx (sessions opened once), then batch after batch of rows."""

    def __init__(self, job: ActorJob) -> None:
        from clip_export.runtime.serving import ClipOnnx

        # The driver's serve-time checks stand where the environment is the driver's (another CPU checks again)
        self.model = ClipOnnx.from_release(
            job.source,
            precision=job.precision,
            threads=job.threads,
            towers=list(job.towers) or None,
            passed_checks=dict(job.passed_checks),
        )
        # the most rows a part runs, per kind: by default as `clip-export embed` runs this release
        self.done, self.part_rows = job.done, dict(job.part_rows or part_rows_by_kind(self.model.manifest))
        if self.model._text is not None:
            self.model.load_tokenizer()  # before batches: a broken tokenizer fails the actor once
        session = self.model._visual or self.model._text
        self.dim = int(session.get_outputs()[0].shape[-1])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["id"])
        status, reason, shas = ["embedded"] * n, [""] * n, [""] * n
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        rows: dict[str, list[tuple[int, np.ndarray]]] = {"image": [], "text": []}  # pixels or token ids
        for row in range(n):
            item = Item(
                str(batch["id"][row]),
                str(batch["kind"][row]),
                path=str(batch["path"][row]) or None,
                data=bytes(batch["data"][row]) or None,
                text=str(batch["text"][row]) or None,
            )
            prepared = prepare(self.model, item, lambda loaded, key=item.id: self.done.get(key) == loaded.sha256)
            shas[row] = prepared.loaded.sha256
            if prepared.skip:
                status[row] = "unchanged"
                continue
            if prepared.loaded.error is not None:
                status[row], reason[row] = "failed", prepared.loaded.error
            else:
                rows[item.kind].append((row, prepared.array))  # type: ignore[arg-type]
        for kind, run in (("image", self.model.embed_pixels), ("text", self.model.embed_token_ids)):
            # parts of at most part_rows[kind] of this batch's rows to embed, as the local engine runs them
            for part in part_slices(len(rows[kind]), 1, self.part_rows[kind]):
                vectors[[r for r, _ in rows[kind][part]]] = run(np.stack([a for _, a in rows[kind][part]]))
        return {
            "id": batch["id"],
            "kind": batch["kind"],
            "sha256": np.array(shas, dtype=object),
            "status": np.array(status, dtype=object),
            "reason": np.array(reason, dtype=object),
            "embedding": vectors,
        }


def _ray() -> Any:
    return import_optional("ray", package="ray[data]", extra="ray", purpose="clip-export embed --ray")


def run_ray(
    *,
    job: ActorJob,
    items: Sequence[Item],
    writer: ChunkWriter,
    batch_size: int,
    address: str | None,
    progress: Progress,
    actors: int | None = None,
) -> None:
    """Embed `items` through `writer` on Ray Data: a pool of actors, each built from `job`."""
    ray = _ray()
    import_optional("ray.data", package="ray[data]", extra="ray", purpose="clip-export embed --ray")
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress line says how far it is
    ray.data.DataContext.get_current().enable_progress_bars = False
    started_here = not ray.is_initialized()
    if started_here:  # workers import this clip_export (a checkout on PYTHONPATH included)
        ray.init(
            address=address,
            runtime_env={
                "env_vars": {
                    "PYTHONPATH": os.pathsep.join(p for p in (PACKAGE_PARENT, os.environ.get("PYTHONPATH", "")) if p)
                }
            },
            log_to_driver=False,
            include_dashboard=False,
        )
    try:
        cpus, pool = pool_size(ray, actors)
        progress(
            f"Ray: {len(items)} items on {cpus} CPUs of {len(ray.nodes())} node(s), {pool} actors of {job.threads} "
            f"thread(s), batches of {batch_size}"
        )
        mapped = actor_pool_map(ray, items, EmbedMapper, {"job": job}, batch_size, cpus, pool)
        _collect(mapped, writer, len(items), progress)
    finally:
        if started_here:
            ray.shutdown()


def pool_size(ray: Any, actors: int | None = None) -> tuple[int, int]:
    """(the cluster's CPUs, the actors to start): `actors` when given, else one per CPU."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return cpus, actors or max(1, cpus)


def actor_pool_map(
    ray: Any, items: Sequence[Item], mapper: type, arguments: dict[str, Any], batch_size: int, cpus: int, pool: int
) -> Any:
    """The items as a Ray dataset, mapped in batches by a pool of `pool` actors of `mapper` (pool_size):
    one place, so that benchmarks/add_documents.py times Ray Data's own start-up on the pool the engine uses."""
    rows = [{field: getattr(i, field) or (b"" if field == "data" else "") for field in FIELDS} for i in items]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), pool * 4)))
    return dataset.map_batches(
        mapper,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=min(1, cpus / pool),
        fn_constructor_kwargs=arguments,
    )


def _collect(mapped: Any, writer: ChunkWriter, total: int, progress: Progress) -> None:
    """The driver's half: rows stream in as actors finish batches and go out in whole chunks."""
    counts, errors = writer.counts, writer.errors
    started, last = time.perf_counter(), 0.0
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        embedded = []
        for row in range(len(batch["id"])):
            status = batch["status"][row]
            if status == "unchanged":
                counts["unchanged"] += 1
            elif status == "failed":
                errors.append(
                    (
                        str(batch["id"][row]),
                        str(batch["kind"][row]),
                        str(batch["sha256"][row]),
                        str(batch["reason"][row]),
                    )
                )
            else:
                embedded.append(row)
        if embedded:
            writer.add(
                [str(batch["id"][row]) for row in embedded],
                [str(batch["kind"][row]) for row in embedded],
                [str(batch["sha256"][row]) for row in embedded],
                np.stack([np.asarray(batch["embedding"][row], dtype=np.float32) for row in embedded]),
            )
        now = time.perf_counter()
        if now - last >= 1.0:
            last = now
            progress(items_progress(counts, len(errors), total, now - started))
    writer.flush()
