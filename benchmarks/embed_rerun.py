"""A re-run of `clip-export embed` over a photo library where nothing changed: files not read because
their size and mtime are as the last run saw them (the default), against every file read and hashed
(`--rehash`, what every re-run did before embed_filestats).

    python benchmarks/embed_rerun.py                     # ViT-B/32 INT8 with random weights, 300 photos
    python benchmarks/embed_rerun.py --model-dir DIR --photos 1000 --cold

The library: `--photos` JPEGs of 4032×3024 (a phone camera's 12 MP, about 3 MB each: a bundled photo
upscaled, with seeded noise so that it compresses like a photo), each under its own name, their mtime
an hour back. One first run embeds them all; then each round re-runs both ways in a new seeded order,
with the page cache warm, and with --cold also after dropping it (root only: /proc/sys/vm/drop_caches),
which is a library on disk that a re-run has not just read. Figures: seconds for the whole re-run
(opening the artifact and its serve-time check included), median over the rounds. Writes
benchmarks/results/embed_rerun-<model>.json and prints Markdown.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_report import prepare  # noqa: E402  (this directory is on sys.path)
from indexing import save_results  # noqa: E402

from clip_export.core.evalset import BUNDLED_DIR  # noqa: E402
from clip_export.core.spec import EMBED_FILE_STATS_SETTLE_S  # noqa: E402
from clip_export.stages.embed.embed import embed  # noqa: E402

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def library(folder: Path, photos: int) -> int:
    """`photos` 12 MP JPEGs under new names, their mtime an hour back; returns their bytes in all."""
    rng = np.random.default_rng(0)
    base = Image.open(BUNDLED_DIR / "images" / "astronaut.jpg").convert("RGB").resize((4032, 3024), Image.BICUBIC)
    noisy = np.asarray(base, dtype=np.int16) + rng.integers(-6, 7, (3024, 4032, 3), dtype=np.int16)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(folder / "source.jpg", quality=92)
    content = (folder / "source.jpg").read_bytes()
    (folder / "source.jpg").unlink()
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for n in range(photos):
        path = folder / f"IMG_{n:05d}.jpg"
        path.write_bytes(content)
        os.utime(path, ns=(an_hour_ago, an_hour_ago))
    time.sleep(EMBED_FILE_STATS_SETTLE_S)  # their ctime is now: the first run records them only once it has settled
    return photos * len(content)


def drop_page_cache() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also re-run after dropping the page cache (root)")
    args = parser.parse_args()
    if args.cold and not os.access(DROP_CACHES, os.W_OK):
        parser.error(f"--cold drops the page cache through {DROP_CACHES}, which this user cannot write")
    model_dir = args.model_dir or prepare(args.model)
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="embed-rerun-") as tmp:
        folder, out = Path(tmp) / "photos", Path(tmp) / "index"
        folder.mkdir()
        total_bytes = library(folder, args.photos)
        started = time.perf_counter()
        first = embed(model_dir, [folder], out, precision=args.precision)
        first_s = time.perf_counter() - started
        print(f"first run: {first.embedded} embedded in {first_s:.1f} s", file=sys.stderr, flush=True)
        methods = [("stat", False), ("rehash", True)]
        caches = ["warm", "cold"] if args.cold else ["warm"]
        order = random.Random(0)
        for round_number in range(args.rounds):
            runs = [(cache, name, rehash) for cache in caches for name, rehash in methods]
            order.shuffle(runs)
            for cache, name, rehash in runs:
                if cache == "cold":
                    drop_page_cache()
                started = time.perf_counter()
                result = embed(model_dir, [folder], out, precision=args.precision, rehash=rehash)
                seconds = time.perf_counter() - started
                assert result.embedded == 0 and result.unchanged == args.photos, result
                assert result.unchanged_unread == (0 if rehash else args.photos), result
                samples.setdefault(f"{cache} {name}", []).append(seconds)
                print(f"round {round_number + 1}: {cache} {name} {seconds:.2f} s", file=sys.stderr, flush=True)
    rows = [
        {"re-run": key, "seconds": statistics.median(values), "passes_s": values}
        for key, values in sorted(samples.items())
    ]
    meta = save_results(
        f"embed_rerun-{model_dir.name}",
        rows,
        photos=args.photos,
        library_bytes=total_bytes,
        precision=args.precision,
        first_run_s=first_s,
        rounds=args.rounds,
        model_dir=str(model_dir),
    )
    print(
        f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores, {args.photos} photos of 4032×3024 "
        f"({total_bytes / 1e9:.2f} GB), {args.precision}; first run {first_s:.1f} s; median of {args.rounds} rounds\n"
    )
    print("| re-run, nothing changed | seconds (median) | every round |")
    print("|---|---|---|")
    for row in rows:
        print(f"| {row['re-run']} | {row['seconds']:.2f} | {', '.join(f'{v:.2f}' for v in row['passes_s'])} |")
    for cache in caches:
        ratio = statistics.median(samples[f"{cache} rehash"]) / statistics.median(samples[f"{cache} stat"])
        print(f"\n{cache} page cache: --rehash takes {ratio:.1f}× the default re-run's time")


if __name__ == "__main__":
    main()
