"""The local engine's one pool (a thread per core, parts that are ready first) against the layout it
replaced: reader threads beside inference threads.

    python benchmarks/embed_pool.py                       # ViT-B/32 with random weights, INT8 and fp32
    python benchmarks/embed_pool.py --model-dir DIR --cbs 10,50,100 --repeats 9

Both run `clip-export embed`'s own engine (embed_local.run_local, through indexing.local_engine)
on the add_documents corpus (photos decoded from files, captions). The earlier layout is rebuilt here
by giving run_local another pool with the same submit(): spec.EMBED_READ_THREADS threads that only
prepare, and one thread per part run at once that only runs parts, each pool first in, first out.
Beside them, as in add_documents: pure session.run of the same batches on one two-thread session,
and the engine's parts alone on its one-thread sessions. Methods run in a new seeded random order
every pass; figures are medians over the passes, with the process's CPU time (user + system) per
document and the share of the cores it kept busy. Writes benchmarks/results/embed_pool-<model>.json
and prints Markdown.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_report import prepare  # noqa: E402
from indexing import MIN_DOCS, corpus_inputs, local_engine, parallel_pure, save_results  # noqa: E402  (this directory is on sys.path)

from clip_export.core.spec import EMBED_READ_THREADS  # noqa: E402
from clip_export.runtime import ClipOnnx  # noqa: E402
from clip_export.stages.bench.timing import interleaved_samples  # noqa: E402
from clip_export.stages.embed import embed_local  # noqa: E402
from clip_export.stages.embed.embed_inputs import in_batching_order, list_items, part_rows_by_kind  # noqa: E402

ONE_POOL = "local engine, one pool (a thread per core, parts first)"
TWO_POOLS = f"local engine, {EMBED_READ_THREADS} reader threads beside a thread per part (the earlier layout)"
PURE = "pure session.run, one two-thread session"
PARTS = "pure, the engine's parts on its one-thread sessions"
Result = TypeVar("Result")


class ReadersBesideInference:
    """The engine's pool before: preparing on reader threads, parts on threads of their own."""

    def __init__(self, threads: int, parts_at_once: int) -> None:
        self.readers = ThreadPoolExecutor(EMBED_READ_THREADS, thread_name_prefix="embed-decode")
        self.inference = ThreadPoolExecutor(parts_at_once, thread_name_prefix="embed-infer")

    def submit(self, call: Callable[[], Result], part: bool) -> Future[Result]:
        return (self.inference if part else self.readers).submit(call)

    def __enter__(self) -> ReadersBesideInference:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.readers.shutdown()
        self.inference.shutdown()


def two_pools(call: Callable[[], Any]) -> Any:
    with mock.patch.object(embed_local, "CorePool", ReadersBesideInference):
        return call()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def with_cpu(call: Callable[[], Any], spent: list[float]) -> Callable[[], Any]:
    """call(), recording the CPU seconds of each call after the first (the warm-up round), in the
    order of interleaved_samples' wall-time samples."""
    calls = []

    def counted() -> Any:
        cpu = cpu_seconds()
        result = call()
        if calls:
            spent.append(cpu_seconds() - cpu)
        calls.append(1)
        return result

    return counted


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--precisions", default="int8,fp32")
    parser.add_argument("--cbs", default="10,50,100")
    parser.add_argument("--docs", type=int, default=MIN_DOCS, help="documents per kind")
    args = parser.parse_args()
    model_dir = args.model_dir or prepare(args.model)
    session_threads, workers = embed_local.parallelism(0)
    cores = workers  # one part per core this process may use (embed_local.parallelism)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="embed-pool-") as tmp:
        folder, paths, caption_file, captions = corpus_inputs(Path(tmp), args.docs)
        for precision in args.precisions.split(","):
            default = ClipOnnx.from_release(model_dir, precision=precision)
            engine = ClipOnnx.from_release(model_dir, precision=precision, threads=session_threads)
            part_rows = part_rows_by_kind(engine.manifest)  # the engine's cap on each tower's parts
            inputs = {
                "image": (folder, default.pixel_values(paths), default.embed_pixels, engine.embed_pixels),
                "text": (  # the engine batches captions shortest first: the same batches alone
                    caption_file,
                    default.tokenize([str(i.text) for i in in_batching_order(list_items([caption_file]))]),
                    default.embed_token_ids,
                    engine.embed_token_ids,
                ),
            }
            for cbs in [int(c) for c in args.cbs.split(",")]:
                methods: dict[tuple[str, str], Callable[[], Any]] = {}
                spent: dict[tuple[str, str], list[float]] = {}
                for kind, (source, rows_in, run_default, run_engine) in inputs.items():
                    calls = {
                        ONE_POOL: lambda s=source: local_engine(engine, precision, [s], cbs, workers),
                        TWO_POOLS: lambda s=source: two_pools(
                            lambda: local_engine(engine, precision, [s], cbs, workers)
                        ),
                        PURE: lambda r=rows_in, run=run_default: [run(r[i : i + cbs]) for i in range(0, len(r), cbs)],
                        PARTS: lambda r=rows_in, run=run_engine, k=kind: parallel_pure(
                            run, r, cbs, workers, part_rows[k]
                        ),
                    }
                    for name, call in calls.items():
                        spent[(kind, name)] = []
                        methods[(kind, name)] = with_cpu(call, spent[(kind, name)])
                walls = interleaved_samples(methods, rounds=args.repeats, warmup=1, order_seed=f"{precision} {cbs}")
                for (kind, name), cpus in spent.items():
                    docs = len(paths) if kind == "image" else len(captions)
                    wall = statistics.median(walls[(kind, name)])
                    cpu = statistics.median(cpus)
                    busy = statistics.median(c / (w * cores) for w, c in zip(walls[(kind, name)], cpus))
                    rows.append(
                        {
                            "precision": precision,
                            "cbs": cbs,
                            "kind": kind,
                            "method": name,
                            "ms_per_doc": 1000 * wall / docs,
                            "cpu_ms_per_doc": 1000 * cpu / docs,
                            "cores_busy": busy,
                        }
                    )
                    print(
                        f"{precision} CBS {cbs:>3} {kind:5} {name[:40]:40} {rows[-1]['ms_per_doc']:7.2f} ms/doc",
                        file=sys.stderr,
                        flush=True,
                    )
    meta = save_results(
        f"embed_pool-{model_dir.name}",
        rows,
        cores=cores,
        workers=workers,
        documents=len(paths),
        repeats=args.repeats,
        model_dir=str(model_dir),
    )
    print(
        f"{meta['date']}, {meta['cpu']}, {cores} cores; {len(paths)} photos decoded from files and "
        f"{len(captions)} captions; median of {args.repeats} passes\n"
    )
    print("| precision | kind | CBS | method | ms/doc | ÷ pure | CPU ms/doc | cores busy |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        pure = next(
            r["ms_per_doc"]
            for r in rows
            if (r["precision"], r["cbs"], r["kind"], r["method"]) == (row["precision"], row["cbs"], row["kind"], PURE)
        )
        print(
            f"| {row['precision']} | {row['kind']} | {row['cbs']} | {row['method']} | {row['ms_per_doc']:.2f} | "
            f"{row['ms_per_doc'] / pure:.3f} | {row['cpu_ms_per_doc']:.2f} | {row['cores_busy']:.3f} |"
        )


if __name__ == "__main__":
    main()
