"""How many rows one inference part of `clip-export embed` should run (spec.EMBED_PART_ROWS, and from it
spec.EMBED_PART_ACTIVATIONS, the budget every tower's parts are sized by).

    python benchmarks/embed_part_rows.py                  # ViT-B/32 with random weights, INT8 and fp32
    python benchmarks/embed_part_rows.py --model-dir DIR  # an existing export with INT8 artifacts
    python benchmarks/embed_part_rows.py --model-dir DIR --docs 32 --precisions int8  # ViT-L/14

The local engine runs one-thread sessions, one part of a batch per core at once. This script runs
the add_documents photo corpus (already preprocessed: inference only) through the same one-thread
sessions in parts of 2 to 50 rows, one part per core at once, and, for comparison, in batches of
10, 50 and 100 on one session with onnxruntime's default threads (the add_documents baseline). The
methods are interleaved in a new seeded random order every pass, so drift on a shared machine hits
each alike. Figures: ms per photo, the median over the passes. Writes
benchmarks/results/embed_part_rows-<model>.json (every pass included) and prints Markdown; --passes
also prints every pass of every method, in the order the rounds ran, to show whether a method's
passes spread evenly or fall into groups (the default session's two modes, docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_report import prepare  # noqa: E402
from indexing import MIN_DOCS, corpus, save_results  # noqa: E402  (this directory is on sys.path)

from clip_export.core.spec import EMBED_PART_ACTIVATIONS, EMBED_PART_ROWS  # noqa: E402
from clip_export.runtime import ClipOnnx  # noqa: E402
from clip_export.stages.bench.timing import interleaved_samples  # noqa: E402
from clip_export.stages.embed.embed_local import parallelism  # noqa: E402

PART_ROWS = (2, 4, 8, 12, 16, 25, 50)
BATCHES = (10, 50, 100)


def numbers(listed: str) -> list[int]:
    return [int(n) for n in listed.split(",") if n]


def in_parts(run: Callable[[Any], Any], pixels: Any, rows: int, workers: int) -> Callable[[], None]:
    def call() -> None:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, [pixels[i : i + rows] for i in range(0, len(pixels), rows)]))

    return call


def in_batches(run: Callable[[Any], Any], pixels: Any, size: int) -> Callable[[], None]:
    def call() -> None:
        for start in range(0, len(pixels), size):
            run(pixels[start : start + size])

    return call


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precisions", default="int8,fp32")
    parser.add_argument("--docs", type=int, default=MIN_DOCS, help="photos (fewer for ViT-L/14 on 2 cores)")
    parser.add_argument("--part-rows", default=",".join(map(str, PART_ROWS)))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--passes", action="store_true", help="also print every pass, round by round")
    args = parser.parse_args()
    model_dir = args.model_dir or prepare(args.model)
    _, workers = parallelism(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="embed-part-rows-") as tmp:
        paths, _ = corpus(Path(tmp), args.docs)
        for precision in args.precisions.split(","):
            default = ClipOnnx.from_release(model_dir, precision=precision, towers=["visual"])
            one_thread = ClipOnnx.from_release(model_dir, precision=precision, threads=1, towers=["visual"])
            pixels = default.pixel_values(paths)
            methods = {
                f"parts of {n} rows, one per core": in_parts(one_thread.embed_pixels, pixels, n, workers)
                for n in numbers(args.part_rows)
            }
            methods |= {
                f"batches of {n}, one default session": in_batches(default.embed_pixels, pixels, n)
                for n in numbers(args.batches)
            }
            samples = interleaved_samples(methods, rounds=args.repeats, warmup=1, order_seed=0)
            for name, values in samples.items():
                rows.append(
                    {
                        "precision": precision,
                        "method": name,
                        "ms_per_photo": 1000 * statistics.median(values) / len(paths),
                        "spread_ms": [1000 * min(values) / len(paths), 1000 * max(values) / len(paths)],
                        "passes_ms": [1000 * value / len(paths) for value in values],
                    }
                )
                print(f"{precision} {name:36} {rows[-1]['ms_per_photo']:6.2f} ms/photo", file=sys.stderr, flush=True)
    meta = save_results(
        f"embed_part_rows-{model_dir.name}",
        rows,
        workers=workers,
        photos=len(paths),
        repeats=args.repeats,
        model_dir=str(model_dir),
        EMBED_PART_ROWS=EMBED_PART_ROWS,
        EMBED_PART_ACTIVATIONS=EMBED_PART_ACTIVATIONS,
    )
    print(
        f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores, {len(paths)} photos, median of {args.repeats} passes\n"
    )
    print("| precision | how the photos run | ms per photo (median) | fastest–slowest pass |")
    print("|---|---|---|---|")
    for row in rows:
        low, high = row["spread_ms"]
        print(f"| {row['precision']} | {row['method']} | {row['ms_per_photo']:.2f} | {low:.2f}–{high:.2f} |")
    if args.passes:
        print_passes(rows)


def print_passes(rows: list[dict[str, Any]]) -> None:
    """Every pass of every method, one line per round (a round runs each method once, in shuffled order)."""
    for precision in dict.fromkeys(row["precision"] for row in rows):
        mine = [row for row in rows if row["precision"] == precision]
        print(f"\n{precision}, ms per photo in each pass:\n")
        print("| round | " + " | ".join(row["method"] for row in mine) + " |")
        print("|---|" + "---|" * len(mine))
        for index, values in enumerate(zip(*(row["passes_ms"] for row in mine)), start=1):
            print(f"| {index} | " + " | ".join(f"{value:.2f}" for value in values) + " |")


if __name__ == "__main__":
    main()
