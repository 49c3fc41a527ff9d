"""`clip-export embed`: a folder of photos or a table of captions into a Parquet index that knows
what built it (docs/embed.md).

Three seams, shared by both engines: the reader (embed_inputs: items, their content and its hash),
the mapper (ClipOnnx: the release's own preprocessing, tokenizer and sessions) and the writer
(embed_store: atomic Parquet chunks, the dataset manifest, the resume index). The engine is the
fourth: the local engine (embed_local: one thread per core runs the parts that are ready and
prepares the next batches whenever none is) or Ray Data (embed_ray, imported only for --ray).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.environment import current_environment, versions
from clip_export.core.errors import ClipExportError, ServeCheckError
from clip_export.core.manifest import exclusive, now_iso, read_manifest
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import (
    EMBED_BATCH_SIZE,
    EMBED_CHUNK_ROWS,
    EMBED_PRECISION_PREFERENCE,
    ONNX_FORMAT,
    TOWERS,
)
from clip_export.runtime.serving import ClipOnnx, pick_for_cpu
from clip_export.stages.embed.compat import CompatResult, compare_models
from clip_export.stages.embed.embed_filestats import read_entries, record_entries, skip_unchanged_files
from clip_export.stages.embed.embed_inputs import TOWER_OF_KIND, in_batching_order, list_items, part_rows_by_kind
from clip_export.stages.embed.embed_local import parallelism, run_local
from clip_export.stages.embed.embed_store import ChunkWriter, Store, new_manifest


@dataclass(frozen=True)
class EmbedResult:
    out: Path
    engine: str
    precision: str
    artifact_key: str
    why_this_artifact: str
    items: int
    embedded: int
    unchanged: int
    failed: int
    errors: tuple[tuple[str, str], ...]  # (id, reason), the first few
    chunks_written: int
    seconds: float
    items_per_s: float
    environment: str
    compat: CompatResult | None = None
    unchanged_unread: int = 0  # of `unchanged`, the files taken as unchanged from their stat alone


def open_model(source: Path, precision: str | None, towers: set[str], threads: int = 0) -> tuple[ClipOnnx, str, str]:
    """The model to embed with, its precision and why: --precision, else the fastest that holds here.
    Only the towers the items need are opened (every tower when there are no items, as for an empty folder)."""
    needed = towers or None
    if precision:
        model = ClipOnnx.from_release(source, precision=precision, threads=threads, towers=needed)
        return model, precision, f"{precision}: asked for with --precision"
    manifest = read_manifest(source)
    refused = []
    for candidate in EMBED_PRECISION_PREFERENCE:
        have = {e.tower for e in manifest.select(format=ONNX_FORMAT, precision=candidate)}
        if not towers <= have:
            continue
        try:
            model = ClipOnnx.from_release(source, precision=candidate, threads=threads, towers=needed)
        except ServeCheckError as exc:
            refused.append(f"{candidate} fails here ({str(exc).split(':')[0]})")
            continue
        how = "; ".join(f"{t}: {c.status}" for t, c in sorted(model.serve_checks.items()) if t in towers)
        return (
            model,
            candidate,
            f"{candidate}: the fastest that holds here ({how})" + (f"; {'; '.join(refused)}" if refused else ""),
        )
    raise ClipExportError(
        f"{source} has no artifact for {', '.join(sorted(towers))} that holds in this environment"
        + (f": {'; '.join(refused)}" if refused else "")
    )


def artifact_record(model: ClipOnnx, precision: str) -> dict[str, Any]:
    """What the dataset manifest says built it: model, precision, preprocessing, ONNX bytes, here."""
    onnx = {}
    for tower in sorted(TOWERS):  # every tower of this precision, opened or not: the key names the release's pair
        candidates = model.manifest.select(tower=tower, format=ONNX_FORMAT, precision=precision)
        if not candidates:
            continue
        opened = model.artifacts.get(tower)
        served = (
            opened.path.relative_to(model.root).as_posix()  # int8: the family picked for this CPU
            if opened is not None
            else pick_for_cpu(candidates, model.cpu_flags).path
        )
        entry = next(e for e in candidates if e.path == served)
        onnx[tower] = {"path": entry.path, "sha256": entry.sha256}
    key = hashlib.sha256("|".join(f"{t}:{v['sha256']}" for t, v in sorted(onnx.items())).encode()).hexdigest()[:16]
    provider = next(iter(model.artifacts.values())).provider
    info = model.manifest.model.fields  # copied as written: the index names what its manifest said
    tokenizer_file = model.manifest.section_file("tokenizer.file", str(model.root))
    return {
        "key": key,
        "source": str(Path(model.root).resolve()),
        "model": {
            k: info.get(k) for k in ("name", "arch", "pretrained", "source", "seed", "checkpoint_sha256") if k in info
        },
        "precision": precision,
        "preprocess": model.manifest.section("preprocess"),
        "preprocess_impl": "fast",
        "tokenizer": tokenizer_file.sha256 if tokenizer_file else None,
        "onnx": onnx,
        "environment": current_environment(provider).to_json(),
        "versions": versions(),
    }


def embed(
    source: Path,
    inputs: Sequence[str | Path],
    out: Path,
    *,
    precision: str | None = None,
    batch_size: int = EMBED_BATCH_SIZE,
    column: str | None = None,
    chunk_rows: int = EMBED_CHUNK_ROWS,
    reembed: bool = False,
    ray_address: str | None = None,
    use_ray: bool = False,
    threads: int = 0,
    rehash: bool = False,
    progress: Progress = silent,
) -> EmbedResult:
    if batch_size < 1 or chunk_rows < 1:
        raise ClipExportError(f"--batch-size and --chunk-rows must be at least 1 (got {batch_size}, {chunk_rows})")
    with exclusive(Path(out)):  # a second run on the same --out fails at once, before any work
        return _embed(
            source,
            inputs,
            out,
            precision,
            batch_size,
            column,
            chunk_rows,
            reembed,
            ray_address,
            use_ray,
            threads,
            rehash,
            progress,
        )


def _embed(
    source: Path,
    inputs: Sequence[str | Path],
    out: Path,
    precision: str | None,
    batch_size: int,
    column: str | None,
    chunk_rows: int,
    reembed: bool,
    ray_address: str | None,
    use_ray: bool,
    threads: int,
    rehash: bool,
    progress: Progress,
) -> EmbedResult:
    started = time.perf_counter()
    items = in_batching_order(list_items(inputs, column))
    towers = {TOWER_OF_KIND[i.kind] for i in items}
    store = Store(out)
    store.remove_stale_temporaries()
    session_threads, workers = parallelism(threads)  # the Ray driver only checks and records: its own default
    model, chosen, why = open_model(Path(source), precision, towers, threads if use_ray else session_threads)
    artifact = artifact_record(model, chosen)
    dim = int(model.manifest.model.embed_dim or _embed_dim(model))
    compat, accepted = _reconcile(store, artifact, model, dim, reembed, progress)
    store.compact()
    done = store.index()
    entries, unreadable = read_entries(store.out)
    if unreadable:
        progress(unreadable)
    unread = skip_unchanged_files(items, {} if rehash else entries, done, accepted)
    progress(
        f"{len(items)} items, {len(done)} already in {out}, {unread.skipped} files unchanged by size and "
        f"times{' (--rehash: every file is read)' if rehash else ''}; {why}"
    )
    writer = ChunkWriter(store, artifact["key"], chunk_rows)  # either engine's rows go through it
    counts, errors = writer.counts, writer.errors
    part_rows = None if threads and not use_ray else part_rows_by_kind(model.manifest)  # --threads N: whole batches
    engine_threads = 1 if use_ray else session_threads  # each Ray actor: one-thread sessions, one actor per CPU
    layout = {  # what each engine splits batches by, and runs with: INT8 rows depend on their part (docs/embed.md)
        "batch_size": batch_size,
        "batches_of": (
            "Ray Data's batches of every item its stat did not show unchanged (items found unchanged by "
            "their hash and failed ones included, shorter at block ends); "
            "parts over each batch's rows to embed, per kind"
            if use_ray
            else "the items to embed, per kind, in batching order"
        ),
        "parts_at_least": 1 if use_ray else workers,
        "part_rows_at_most": part_rows,
        "session_threads": engine_threads,
    }
    if not unread.pending:  # no engine starts: a Ray cluster alone takes seconds
        progress(f"nothing to read or embed ({unread.skipped} of {len(items)} items unchanged by their stat)")
    elif use_ray:
        from clip_export.stages.embed.embed_ray import ActorJob, run_ray

        job = ActorJob(
            source=str(Path(source).resolve()),
            precision=chosen,
            threads=engine_threads,
            done={k: v.sha256 for k, v in done.items() if v.artifact_key in accepted},
            towers=tuple(sorted(towers)),
            passed_checks=model.passed_checks(),
            part_rows=part_rows,
        )
        run_ray(
            job=job, items=unread.pending, writer=writer, batch_size=batch_size, address=ray_address, progress=progress
        )
    else:
        run_local(
            model, unread.pending, done, accepted, writer, batch_size, progress, workers=workers, part_rows=part_rows
        )
    counts["unchanged"] += unread.skipped
    store.write_errors(errors)
    store.compact(keep_keys=accepted if reembed else None)
    _, unwritten = record_entries(store.out, entries, unread.seen, store.index(), accepted, {e[0] for e in errors})
    if unwritten:
        progress(unwritten)
    seconds = time.perf_counter() - started
    manifest = store.manifest or new_manifest(artifact, dim)
    manifest["runs"].append(
        {
            "date": now_iso(),
            "engine": "ray" if use_ray else "local",
            "artifact_key": artifact["key"],
            "items": len(items),
            "embedded": counts["embedded"],
            "unchanged": counts["unchanged"],
            "unchanged_unread": unread.skipped,
            "failed": len(errors),
            "seconds": round(seconds, 3),
            "layout": layout,
        }
    )
    store.write_manifest(manifest)
    return EmbedResult(
        Path(out),
        "ray" if use_ray else "local",
        chosen,
        artifact["key"],
        why,
        len(items),
        counts["embedded"],
        counts["unchanged"],
        len(errors),
        tuple((e[0], e[3]) for e in errors[:20]),
        counts["chunks"],
        seconds,
        counts["embedded"] / seconds if seconds else 0.0,
        current_environment(model.artifacts[min(model.artifacts)].provider).describe(),
        compat,
        unread.skipped,
    )


def _embed_dim(model: ClipOnnx) -> int:
    session = model._visual or model._text
    return int(session.get_outputs()[0].shape[-1])


def _reconcile(
    store: Store, artifact: dict[str, Any], model: ClipOnnx, dim: int, reembed: bool, progress: Progress
) -> tuple[CompatResult | None, set[str]]:
    """The artifacts whose rows this run keeps. A dataset built by another artifact is extended only
    when `compat` finds the two interchangeable here; --reembed replaces its rows instead."""
    if store.manifest is None:
        store.write_manifest(new_manifest(artifact, dim))
        return None, {artifact["key"]}
    manifest = store.manifest
    old = manifest["artifact"]
    keys = {old["key"]} | {a["key"] for a in manifest.get("accepted", [])}
    if artifact["key"] in keys:
        return None, keys
    if reembed:
        progress(
            f"--reembed: every item is embedded again with {artifact['precision']} ({artifact['key']}); "
            f"rows of {old['precision']} ({old['key']}) go as they are replaced"
        )
        manifest.update(artifact=artifact, accepted=[], embedding_dim=dim, reembedded_from=old)
        store.write_manifest(manifest)
        return None, {artifact["key"]}
    if manifest.get("embedding_dim") != dim or old["model"].get("arch") != artifact["model"].get("arch"):
        raise ClipExportError(
            f"{store.out} was built by {old['model'].get('arch')} ({manifest.get('embedding_dim')}-d); "
            f"this is {artifact['model'].get('arch')} ({dim}-d): different embedding spaces never share "
            "an index; use another --out or --reembed"
        )
    progress(
        f"{store.out} was built by {old['precision']} ({old['key']}); checking that {artifact['precision']} "
        "is interchangeable with it"
    )
    try:
        previous = ClipOnnx.from_release(old["source"], precision=old["precision"], check="off")
    except ClipExportError as exc:
        raise ClipExportError(
            f"{store.out} was built by {old['precision']} from {old['source']}, which cannot be opened "
            f"to check compatibility ({exc}); pass --reembed to re-index"
        ) from None
    # The key names every tower, so the check must too: a captions-only run opened only the text tower.
    compared = (
        model
        if set(model.artifacts) >= set(artifact["onnx"])
        else ClipOnnx.from_release(model.root, precision=artifact["precision"], cpu_flags=model.cpu_flags)
    )
    result = compare_models(previous, compared, old["precision"], artifact["precision"])
    if result.verdict != "interchangeable":
        raise ClipExportError(
            f"refusing to extend {store.out}: {result.summary()}; pass --reembed to re-index with {artifact['precision']}"
        )
    manifest.setdefault("accepted", []).append({**artifact, "compat": result})
    store.write_manifest(manifest)
    return result, keys | {artifact["key"]}
