"""`clip-export embed` and `clip-export compat`: parse, call one function, render (cli.py registers them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from clip_export.cli_parse import CONTEXT
from clip_export.cli_render import cell, emit_json, progress_printer, table
from clip_export.core.errors import ClipExportError
from clip_export.core.spec import EMBED_BATCH_SIZE, EMBED_CHUNK_ROWS, EMBED_ERRORS_NAME, EMBED_PART_ROWS, PRECISIONS

LOCAL_RAY = "local"


@click.command("embed", context_settings=CONTEXT)
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="The dataset directory: dataset.json, embeddings/part-*.parquet, errors.parquet.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Embed with this artifact (default: the fastest that holds in this environment).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=EMBED_BATCH_SIZE,
    show_default=True,
    help="Items per session run (the report's client batch size, CBS).",
)
@click.option(
    "--column",
    default=None,
    help="The table column with image paths, image bytes or captions (Parquet, CSV, JSONL inputs).",
)
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=EMBED_CHUNK_ROWS,
    show_default=True,
    help="Rows per Parquet chunk: a kill loses at most one chunk's work.",
)
@click.option(
    "--threads",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Local engine: intra-op threads per session. 0: one-thread sessions, every batch split into parts "
    "(at least one per core) of as many rows as fit the tower's widest activation in a budget (8 for ViT-B/32, "
    f"1 for ViT-L/14; {EMBED_PART_ROWS} for exports that did not record it), one per core at once; N: N-thread "
    "sessions, whole batches one at a time. Ray actors have one thread each and run the same parts.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value=LOCAL_RAY,
    default=None,
    metavar="[ADDRESS]",
    help="Run on Ray Data: a cluster's ADDRESS, or a local Ray with no ADDRESS (pip install 'clip-export[ray]').",
)
@click.option(
    "--reembed", is_flag=True, help="Embed everything again with this artifact when the dataset was built by another."
)
@click.option(
    "--rehash",
    is_flag=True,
    help="Read and hash every file, even those whose size, times and inode are as the last run saw them.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")
def embed_command(
    source: Path,
    inputs: Sequence[str],
    out: Path,
    precision: str | None,
    batch_size: int,
    column: str | None,
    chunk_rows: int,
    threads: int,
    ray_address: str | None,
    reembed: bool,
    rehash: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Embed images and captions with an export or release into a resumable Parquet index.

    INPUT: image files, folders (recursive), a .txt with one caption a line, or a
    .parquet/.csv/.jsonl table (--column). A re-run embeds only new or changed items, and
    does not read files whose size, times and inode are as it last saw them (--rehash reads all).

    \b
    Example:
      clip-export embed dist/ViT-B-32-v1 photos/ --out index/
    """
    from clip_export.stages.embed.embed import embed

    result = embed(
        source,
        inputs,
        out,
        precision=precision,
        batch_size=batch_size,
        column=column,
        chunk_rows=chunk_rows,
        reembed=reembed,
        rehash=rehash,
        threads=threads,
        use_ray=ray_address is not None,
        ray_address=None if ray_address in (None, LOCAL_RAY) else ray_address,
        progress=progress_printer(quiet or as_json),
    )
    if as_json:
        emit_json(result)
    else:
        unread = f" ({result.unchanged_unread} not read: same size and times)" if result.unchanged_unread else ""
        click.echo(
            f"{result.out}: {result.embedded} embedded, {result.unchanged} unchanged{unread}, {result.failed} "
            f"failed of {result.items} items in {result.seconds:.1f} s ({result.items_per_s:.1f} items/s, "
            f"{result.engine} engine)"
        )
        click.echo(f"artifact {result.artifact_key}: {result.why_this_artifact}")
        click.echo(f"measured on {result.environment}")
        if result.compat:
            click.echo(f"extended: {result.compat.summary()}")
        if result.errors:
            click.echo(table(["item", "reason"], list(result.errors)))
    if result.failed:
        raise ClipExportError(
            f"{result.failed} of {result.items} items could not be embedded; {out / EMBED_ERRORS_NAME} "
            "lists them with the reason"
        )


@click.command("compat", context_settings=CONTEXT)
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
def compat_command(old: str, new: str, as_json: bool) -> None:
    """Can an index built by OLD be searched with NEW? Each is DIR or DIR:PRECISION (default fp32).

    \b
    Example:
      clip-export compat dist/ViT-B-32-v1:fp32 dist/ViT-B-32-v1:int8
    """
    from clip_export.stages.embed.compat import compat

    result = compat(old, new)
    if as_json:
        emit_json(result)
        return
    rows = [
        (m.name, cell(m.value), f"{m.direction} {cell(m.limit)}", "pass" if m.passed else "FAIL")
        for m in result.metrics
    ]
    click.echo(f"{result.new} against {result.old} ({result.items})")
    click.echo(table(["metric", "value", "limit", "result"], rows))
    click.echo(f"verdict: {result.verdict.upper()}; it holds for these bytes on {result.environment}")
