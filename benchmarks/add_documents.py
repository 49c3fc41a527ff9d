"""The report's add_documents table: ms per document when a corpus is indexed in client batches (CBS).

    python benchmarks/add_documents.py                       # ViT-B/32, fp32 and INT8, CBS 1/10/50/100
    python benchmarks/add_documents.py --model-dir DIR --ray # an existing export; add the Ray engine

Documents: images decoded from files (the bundled photos and the report's two image sizes, a 640×427
JPEG and a 2162×762 RGBA PNG, written here as in benchmarks/preprocessing.py, repeated under new
names to at least 112 files) and captions (the bundled ones, repeated to at least 112). In one run,
interleaved per CBS so drift on a shared machine hits every method alike:

- torch eager: open_clip's model and its PIL preprocessing, decode then embed (the report's load-cpu
  rows; fp32 only)
- naive ClipOnnx loop: `embed_images(paths)` per batch, decode then embed, no overlap
- local engine: `clip-export embed`'s engine (its pool of a thread per core, preparing and running
  parts, the Parquet writer, hashing) on an already opened artifact, with its default sessions: one
  thread each, every batch split into parts (at least one per core, none over the rows
  embed_inputs.part_rows_by_kind gives the tower), one per core at once
- Ray engine (--ray): `embed --ray` on a local Ray, actor start included; also on 2 documents (its
  start-up), and Ray Data alone on those 2 (embed_ray.actor_pool_map's pool of actors that return
  their batch: what of the start-up is Ray's own); from these, the corpus size from which a whole
  run, start-up counted, is within 25% of pure session.run
- pure session.run: the same batches, preprocessed beforehand, through the session alone (for
  captions also the engine's own batches, which group captions by length), on the default
  session (onnxruntime's threads, one batch at a time): the issue's baseline
- pure, the engine's parts: the same batches split as the engine splits them, on its one-thread
  sessions, one part per core at once, nothing else running
- prepare alone: what the engine's pool does per document before inference (read, hash, decode and
  preprocess, or tokenize), serially on one thread (also with Pillow decoding every PNG, as without
  the embed extra's imagecodecs, and the local engine so); with the faster pure row it gives the floor,
  pure + prepare / cores: the best any overlap can do when inference already keeps every core
  busy; the local engine's distance from pure is the floor's own (what preparing costs) plus what
  the overlap loses on top of it

Each row's figure is the median over `--repeats` passes over the corpus, divided by the documents:
a warm-up pass, then each pass in a new seeded random order (stages.bench.timing.interleaved_samples).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu_report import prepare  # noqa: E402
from indexing import MIN_DOCS, corpus_inputs, local_engine, parallel_pure  # noqa: E402  (this directory is on sys.path)

from clip_export.core import png_decode  # noqa: E402
from clip_export.core.manifest import read_manifest  # noqa: E402
from clip_export.runtime import ClipOnnx  # noqa: E402
from clip_export.stages.bench.timing import interleaved_samples  # noqa: E402
from clip_export.stages.embed.embed_inputs import (  # noqa: E402
    in_batching_order,
    list_items,
    part_rows_by_kind,
)
from clip_export.stages.embed.embed_inputs import prepare as prepare_item  # noqa: E402
from clip_export.stages.embed.embed_local import parallelism  # noqa: E402

RESULTS = Path(__file__).parent / "results"
RAY = "Ray engine (local Ray, actor start incl.)"
RAY_START = "Ray engine on 2 documents (its start-up)"
RAY_PAST_START = "Ray engine past start-up (full run − 2-document run)"
RAY_DATA_START = "Ray Data alone on 2 documents (the engine's actor pool, a mapper that returns its batch)"
PREPARE = "prepare alone, one thread (read, hash, decode or tokenize)"
PILLOW_PNG = ", Pillow decoding every PNG (no libspng)"
CORES = parallelism(0)[1]  # the cores the engine runs one part on each
FLOOR = f"floor: pure + prepare ÷ {CORES} cores"
PURE_PARALLEL = "pure, one-thread sessions, the engine's parts, one per core at once"
PURE = {"image": "pure session.run", "text": "pure session.run, the engine's batches (by length)"}
CBS = (1, 10, 50, 100)


def batches(values: list[Any], size: int) -> list[list[Any]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


def torch_loop(model_dir: Path) -> tuple[Callable[[list[str], int], None], Callable[[list[str], int], None]]:
    import open_clip
    import torch

    arch = read_manifest(model_dir).model.arch
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer(arch)

    def images(paths: list[str], cbs: int) -> None:
        with torch.inference_mode():
            for batch in batches(paths, cbs):
                model.encode_image(torch.stack([preprocess(Image.open(p)) for p in batch]), normalize=True)

    def texts(captions: list[str], cbs: int) -> None:
        with torch.inference_mode():
            for batch in batches(captions, cbs):
                model.encode_text(tokenizer(batch), normalize=True)

    return images, texts


def pillow_png(call: Callable[[], Any]) -> Any:
    """call() as on a machine without imagecodecs: Pillow decodes every PNG (the same pixels, slower)."""
    with mock.patch.object(png_decode, "_imagecodecs", lambda: None):
        return call()


def ray_engine(model_dir: Path, precision: str, inputs: list[Path], cbs: int) -> None:
    from clip_export.stages.embed.embed import embed

    with tempfile.TemporaryDirectory() as out:
        embed(model_dir, inputs, Path(out) / "index", precision=precision, batch_size=cbs, use_ray=True)


class ReturnBatch:
    """Ray Data's own share of the engine's start-up: the same pool, with actors that do nothing."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return batch


def ray_data_alone(inputs: list[Path], cbs: int) -> None:
    import ray

    from clip_export.stages.embed.embed_ray import actor_pool_map, pool_size

    mapped = actor_pool_map(ray, list_items(inputs), ReturnBatch, {}, cbs, *pool_size(ray))  # as run_ray sizes it
    for _ in mapped.iter_batches(batch_size=None):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=None,
        help="an export with fp32 and INT8 artifacts (default: export --model with random weights)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cbs", default=",".join(map(str, CBS)))
    parser.add_argument(
        "--ray", action="store_true", help="add the Ray engine rows (a local Ray, actor start included)"
    )
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument(
        "--ray-only", action="store_true", help="with --ray: only the Ray rows and pure session.run (images)"
    )
    parser.add_argument("--precisions", default="fp32,int8", help="e.g. int8 alone for a slow model")
    parser.add_argument("--docs", type=int, default=MIN_DOCS, help="documents per kind (fewer for ViT-L/14 on 2 cores)")
    args = parser.parse_args()
    model_dir = args.model_dir or prepare(args.model)
    if args.ray:  # one Ray for the run: its rows count actor start (sessions opened), not Ray's own start
        import ray

        ray.init(
            runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)}},
            log_to_driver=False,
            include_dashboard=False,
        )
    sizes = [int(c) for c in args.cbs.split(",")]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="add-documents-") as tmp:
        folder, paths, caption_file, captions = corpus_inputs(Path(tmp), args.docs)
        torch_images, torch_texts = (None, None) if args.no_torch else torch_loop(model_dir)
        for precision in args.precisions.split(","):
            model = ClipOnnx.from_release(model_dir, precision=precision)
            # The engine's own sessions, as `embed` opens them by default (embed_local.parallelism)
            session_threads, workers = parallelism(0)
            engine_model = ClipOnnx.from_release(model_dir, precision=precision, threads=session_threads)
            part_rows = part_rows_by_kind(engine_model.manifest)  # as the engine caps each tower's parts
            pixels = model.pixel_values(paths)
            tokens = model.tokenize(captions)
            # The engine batches captions shortest first (embed_inputs.in_batching_order): the same
            # batches through the session alone are its fair "pure" baseline.
            by_length = model.tokenize([str(i.text) for i in in_batching_order(list_items([caption_file]))])
            items = {"image": list_items([folder]), "text": list_items([caption_file])}
            prepare_all = lambda group: [prepare_item(model, i, lambda _: False) for i in group]
            for cbs in sizes:
                methods: dict[tuple[str, str], Callable[[], Any]] = {
                    ("image", "naive ClipOnnx loop"): lambda: [model.embed_images(b) for b in batches(paths, cbs)],
                    ("image", "local engine"): lambda: local_engine(engine_model, precision, [folder], cbs, workers),
                    ("image", "pure session.run"): lambda: [
                        model.embed_pixels(pixels[i : i + cbs]) for i in range(0, len(pixels), cbs)
                    ],
                    ("image", PREPARE): lambda: prepare_all(items["image"]),
                    ("image", PREPARE + PILLOW_PNG): lambda: pillow_png(lambda: prepare_all(items["image"])),
                    ("image", "local engine" + PILLOW_PNG): lambda: pillow_png(
                        lambda: local_engine(engine_model, precision, [folder], cbs, workers)
                    ),
                    ("text", "naive ClipOnnx loop"): lambda: [model.embed_texts(b) for b in batches(captions, cbs)],
                    ("text", "local engine"): lambda: local_engine(
                        engine_model, precision, [caption_file], cbs, workers
                    ),
                    ("text", "pure session.run"): lambda: [
                        model.embed_token_ids(tokens[i : i + cbs]) for i in range(0, len(tokens), cbs)
                    ],
                    ("text", "pure session.run, the engine's batches (by length)"): lambda: [
                        model.embed_token_ids(by_length[i : i + cbs]) for i in range(0, len(by_length), cbs)
                    ],
                    ("image", PURE_PARALLEL): lambda: parallel_pure(
                        engine_model.embed_pixels, pixels, cbs, workers, part_rows["image"]
                    ),
                    ("text", PURE_PARALLEL): lambda: parallel_pure(
                        engine_model.embed_token_ids, by_length, cbs, workers, part_rows["text"]
                    ),
                    ("text", PREPARE): lambda: prepare_all(items["text"]),
                }
                if torch_images is not None and precision == "fp32":
                    methods[("image", "torch eager loop")] = lambda: torch_images(paths, cbs)
                    methods[("text", "torch eager loop")] = lambda: torch_texts(captions, cbs)
                if args.ray:
                    methods[("image", RAY)] = lambda: ray_engine(model_dir, precision, [folder], cbs)
                    two = [Path(p) for p in paths[:2]]
                    methods[("image", RAY_START)] = lambda: ray_engine(model_dir, precision, two, cbs)
                    methods[("image", RAY_DATA_START)] = lambda: ray_data_alone(two, cbs)
                if args.ray_only:
                    methods = {
                        k: v for k, v in methods.items() if k[1] in (RAY, RAY_START, RAY_DATA_START, "pure session.run")
                    }
                samples = interleaved_samples(methods, rounds=args.repeats, warmup=1, order_seed=f"{precision} {cbs}")
                if args.ray:  # actor start amortises over a real corpus: the per-document cost past it
                    full = statistics.median(samples[("image", RAY)])
                    start, ray_data = (
                        statistics.median(samples.pop(("image", m))) for m in (RAY_START, RAY_DATA_START)
                    )
                    past = (full - start) / (len(paths) - 2)
                    pure = statistics.median(samples[("image", "pure session.run")]) / len(paths)
                    rows.append(
                        {
                            "precision": precision,
                            "cbs": cbs,
                            "kind": "image",
                            "method": RAY_START,
                            "ms_per_doc": None,
                            "seconds": start,
                            "ray_data_seconds": ray_data,
                            # start + past × n <= 1.25 × pure × n: the corpus from which the whole run,
                            # start-up counted, is within 25% of pure session.run (none: never)
                            "within_25_percent_from_docs": (
                                int(start / (1.25 * pure - past)) + 1 if 1.25 * pure > past else None
                            ),
                            "docs": 2,
                        }
                    )
                    samples[("image", RAY_PAST_START)] = [past * len(paths)]
                for kind in ("image", "text"):  # the faster of the two ways to run the batches alone
                    pures = [
                        statistics.median(samples[(kind, m)])
                        for m in (PURE[kind], PURE_PARALLEL)
                        if (kind, m) in samples
                    ]
                    if (kind, PREPARE) in samples and pures:
                        samples[(kind, FLOOR)] = [min(pures) + statistics.median(samples[(kind, PREPARE)]) / CORES]
                for (kind, method), values in samples.items():
                    docs = len(paths) if kind == "image" else len(captions)
                    rows.append(
                        {
                            "precision": precision,
                            "cbs": cbs,
                            "kind": kind,
                            "method": method,
                            "ms_per_doc": 1000 * statistics.median(values) / docs,
                            "docs": docs,
                        }
                    )
                    print(
                        f"{precision} CBS {cbs:>3} {kind:5} {method:24} {rows[-1]['ms_per_doc']:7.2f} ms/doc",
                        file=sys.stderr,
                        flush=True,
                    )
    from clip_export.core.environment import current_environment

    cpu = current_environment("CPUExecutionProvider").describe()
    meta = {
        "date": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "model_dir": str(model_dir),
        "images": len(paths),
        "captions": len(captions),
        "repeats": args.repeats,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"add_documents-{model_dir.name}.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n"
    )
    print(render(meta, rows))


def render(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores; {meta['images']} images decoded from files, {meta['captions']} captions; median of {meta['repeats']} passes",
        "",
        "| precision | kind | method | "
        + " | ".join(f"CBS {c} ms/doc" for c in sorted({r["cbs"] for r in rows}))
        + " |",
        "|---|---|---|" + "---|" * len({r["cbs"] for r in rows}),
    ]
    keys = list(dict.fromkeys((r["precision"], r["kind"], r["method"]) for r in rows if r["ms_per_doc"] is not None))
    for precision, kind, method in keys:
        cells = {
            r["cbs"]: r["ms_per_doc"]
            for r in rows
            if (r["precision"], r["kind"], r["method"]) == (precision, kind, method)
        }
        lines.append(
            f"| {precision} | {kind} | {method} | "
            + " | ".join(f"{cells[c]:.1f}" if c in cells else "–" for c in sorted({r["cbs"] for r in rows}))
            + " |"
        )
    starts = [r for r in rows if r["ms_per_doc"] is None]
    if starts:
        lines += [
            "",
            "Ray engine start-up (a whole `embed --ray` of 2 documents: actors started, sessions opened; "
            "of it, Ray Data alone on the same pool), and the corpus from which a whole run is within 25% of "
            "pure session.run: "
            + ", ".join(
                f"{r['precision']} CBS {r['cbs']} {r['seconds']:.2f} s ({r['ray_data_seconds']:.2f} s), "
                + (
                    f"from {r['within_25_percent_from_docs']} docs"
                    if r["within_25_percent_from_docs"]
                    else "never (past start-up already over 25%)"
                )
                for r in starts
            ),
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
