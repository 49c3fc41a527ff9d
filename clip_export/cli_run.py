"""`clip-export verify|bench|pipeline|release`: parse, call one stage, render (cli.py registers them)."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import click

from clip_export.cli_parse import (
    CONTEXT,
    check_towers,
    dirs_argument,
    int_list,
    json_option,
    local_sources_options,
    model_arguments,
    parse_thresholds,
    providers_option,
    quiet_option,
    resolve_dirs,
    split_csv,
)
from clip_export.cli_render import (
    bench_text,
    emit_json,
    pipeline_text,
    progress_printer,
    verify_text,
)
from clip_export.core.configs import LocalSources, ModelSpec
from clip_export.core.errors import ClipExportError
from clip_export.core.spec import DEFAULT_BENCH_MAX_TIME_S, PIPELINE_PRECISIONS, PRECISIONS


@click.command(context_settings=CONTEXT)
@dirs_argument
@providers_option("Providers to verify on.")
@click.option(
    "--reference",
    type=click.Choice(["stored", "torch"]),
    default="stored",
    show_default=True,
    help="Stored fp32 reference embeddings, or recompute them from the weights.",
)
@click.option(
    "--images",
    type=click.Path(path_type=Path),
    help="Evaluate on this image directory instead of the bundled set (implies --reference torch).",
)
@click.option(
    "--texts",
    type=click.Path(path_type=Path),
    help="Captions file (one per line, or a JSON list) instead of the bundled set.",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    metavar="[PRECISION.]METRIC=VALUE",
    help="Override a threshold, e.g. fp16.mean_abs_normalized=5e-4. Repeatable.",
)
@click.option("--precision", "precisions", default=None, help="Only verify these precisions (comma-separated).")
@click.option(
    "--emulate",
    metavar="CPU",
    default=None,
    help="Verify under qemu-x86_64 -cpu CPU (e.g. Haswell: AVX2 without VNNI), on the onnxruntime kernels that "
    "CPU gets; the verdicts are recorded as emulated. Needs qemu-user.",
)
@local_sources_options
@json_option
@quiet_option
def verify(
    dirs: Sequence[Path],
    providers: list[str],
    reference: str,
    images: Path | None,
    texts: Path | None,
    thresholds: Sequence[str],
    precisions: str | None,
    emulate: str | None,
    sources: LocalSources,
    as_json: bool,
    quiet: bool,
) -> None:
    """Check every artifact in DIR against the fp32 torch reference; exit 1 if any metric fails.

    DIR is a model's artifact directory; without it, every one under ./artifacts.

    \b
    Example:
      clip-export verify artifacts/ViT-B-32 --providers cpu
      clip-export verify artifacts/ViT-B-32 --precision int8 --emulate Haswell
    """
    if emulate:
        from clip_export.cli_emulate import run_emulated

        forwarded = [*map(str, dirs), "--providers", ",".join(providers), "--reference", reference]
        for flag, value in (
            ("--images", images),
            ("--texts", texts),
            ("--precision", precisions),
            ("--weights", sources.weights),
            ("--tokenizer", sources.tokenizer),
            ("--text-config", sources.text_config),
        ):
            forwarded += [flag, str(value)] if value is not None else []
        forwarded += [item for t in thresholds for item in ("--threshold", t)]
        forwarded += ["--json"] * as_json + ["-q"] * quiet
        code = run_emulated(
            emulate,
            ["verify", *forwarded],
            out=lambda line: click.echo(line, nl=False),
            err=lambda line: click.echo(line, nl=False, err=True),
        )
        click.get_current_context().exit(code)
    from clip_export.stages.verify import verify as run_verify

    overrides = parse_thresholds(thresholds)
    wanted = set(split_csv(precisions)) if precisions else None
    results = []
    for model_dir in resolve_dirs(dirs):
        results.append(
            run_verify(
                model_dir,
                providers=providers,
                reference=reference,
                images=images,
                texts=texts,
                thresholds=overrides,
                only=(lambda e: e.precision in wanted) if wanted else None,
                progress=progress_printer(quiet or as_json),
                sources=sources,
            )
        )
    if as_json:
        emit_json(
            [
                {
                    "model_dir": r.model_dir,
                    "passed": r.passed,
                    "failures": r.failures,
                    "checks": r.checks,
                    "write_error": r.write_error,
                }
                for r in results
            ]
        )
    else:
        for r in results:
            click.echo(verify_text(r))
    failed = [f for r in results for f in r.failures]
    unwritten = [r.write_error for r in results if r.write_error]
    if unwritten:
        raise ClipExportError(
            "; ".join(unwritten) + (" (the verdicts above were computed but not recorded)" if not as_json else "")
        )
    if failed:
        if not as_json:
            click.echo("Failures:\n" + "\n".join(f"  - {f}" for f in failed))
        raise ClipExportError(
            f"verification failed: {len(failed)} failing check(s), listed {'in the JSON' if as_json else 'above'}"
        )


@click.command(context_settings=CONTEXT)
@dirs_argument
@providers_option("Providers to time.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, help="Comma-separated batch sizes.")
@click.option("--towers", default="visual,text", show_default=True, help="Comma-separated towers.")
@click.option("--precision", "precisions", default=None, help="Only these artifact precisions (comma-separated).")
@click.option("--threads", type=int, default=None, help="Pinned intra-op threads (default: all cores).")
@click.option(
    "--budget", type=float, default=2.0, show_default=True, help="Seconds of timed runs per row (after warm-up)."
)
@click.option(
    "--max-time",
    "max_time",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BENCH_MAX_TIME_S,
    show_default=True,
    help="Seconds for the whole run; rows get less time as it runs out, and rows it does not reach "
    "are listed as skipped.",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="torch eager fp32 and bf16 autocast (and cuda fp16 on GPU) in the same run.",
)
@click.option("--compile", "compile_baseline", is_flag=True, help="Add the torch.compile baseline (compiles slowly).")
@click.option("--fused-baseline", is_flag=True, help="Add fp32 rows run through onnxruntime's transformer optimizer.")
@local_sources_options
@click.option(
    "--breakdown/--no-breakdown",
    default=True,
    show_default=True,
    help="vectorise() stage times and preprocessing variants.",
)
@json_option
@quiet_option
def bench(
    dirs: Sequence[Path],
    providers: list[str],
    batch_sizes: str,
    towers: str,
    precisions: str | None,
    threads: int | None,
    budget: float,
    max_time: float,
    baselines: bool,
    compile_baseline: bool,
    fused_baseline: bool,
    sources: LocalSources,
    breakdown: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure every artifact × provider × batch size next to torch baselines from the same run.

    Writes BENCH.md, bench-batch1.png and the manifest's benchmark section in DIR.

    \b
    Example:
      clip-export bench artifacts/ViT-B-32 --batch-sizes 1 --providers cpu
    """
    from clip_export.stages.bench.bench import bench as run_bench

    chosen = check_towers(towers)
    sizes = int_list(batch_sizes, "--batch-sizes")
    results = [
        run_bench(
            d,
            providers=providers,
            batch_sizes=sizes,
            towers=chosen,
            threads=threads,
            budget_s=budget,
            max_time_s=max_time,
            baselines=baselines,
            compile_baseline=compile_baseline,
            fused_baseline=fused_baseline,
            breakdown=breakdown,
            precisions=split_csv(precisions) if precisions else None,
            progress=progress_printer(quiet or as_json),
            sources=sources,
        )
        for d in resolve_dirs(dirs)
    ]
    if as_json:
        emit_json(results)
        return
    for r in results:
        click.echo(bench_text(r))


@click.command(context_settings=CONTEXT)
@model_arguments
@click.option(
    "--precisions",
    default=",".join(PIPELINE_PRECISIONS),
    show_default=True,
    help=f"Which precisions to produce and gate, of {', '.join(PRECISIONS)}.",
)
@click.option("--trt", "use_trt", is_flag=True, help="Also build TensorRT engines (needs a GPU).")
@providers_option("Providers for verify and bench.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("artifacts"), show_default=True)
@click.option("--force", is_flag=True, help="Replace existing artifacts.")
@json_option
@quiet_option
def pipeline(
    spec: ModelSpec,
    precisions: str,
    use_trt: bool,
    providers: list[str],
    out: Path,
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Export, convert, verify and bench MODEL in one command; stops at the first failed gate.

    \b
    Example:
      clip-export pipeline ViT-B/32 --random-init --precisions fp32,int8
    """
    from clip_export.pipeline import run_pipeline

    result = run_pipeline(
        spec,
        out=out,
        precisions=split_csv(precisions),
        trt=use_trt,
        providers=providers,
        force=force,
        progress=progress_printer(quiet or as_json),
    )
    if as_json:
        emit_json(result)
    else:
        click.echo(pipeline_text(result))
    if not result.passed:
        raise ClipExportError(
            f"the {result.failed_stage} gate failed (artifacts that passed before it are kept): {result.failure}"
        )


@click.command(context_settings=CONTEXT)
@dirs_argument
@click.option("--tag", required=True, help="Release tag, e.g. v1.0.0.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Where the release directory is written.",
)
@click.option("--upload", is_flag=True, help="Attach the assets to the GitHub release TAG with the gh CLI.")
@click.option(
    "--client-check",
    type=click.Choice(["auto", "require", "off"]),
    default="auto",
    show_default=True,
    help="Embed the bundled set with transformers.js from hf/ and put the cosines in the model card "
    "(auto: where Node and the npm packages are installed).",
)
@click.option(
    "--allow-overridden",
    is_flag=True,
    help="Also ship artifacts that passed verify only under --threshold overrides (the card says so).",
)
@json_option
@quiet_option
def release(
    dirs: Sequence[Path],
    tag: str,
    out: Path,
    upload: bool,
    client_check: str,
    allow_overridden: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Write release assets (artifacts, SHA256SUMS, manifest.json, MODEL_CARD.md, and hf/: the Hugging Face layout) for verified artifacts.

    Several DIRs of one model (engines built on different GPUs) merge into one release.

    \b
    Example:
      clip-export release artifacts/ViT-B-32 --tag v1.0.0 --out dist
    """
    from clip_export.stages.release.release import release as make_release

    chosen = resolve_dirs(dirs)
    if not dirs and len(chosen) > 1:
        raise ClipExportError(
            f"artifacts/ holds {len(chosen)} models ({', '.join(d.name for d in chosen)}); name the DIR to release"
        )
    result = make_release(
        chosen,
        tag=tag,
        out=out,
        upload=upload,
        client_check=client_check,
        progress=progress_printer(quiet or as_json),
        allow_overridden=allow_overridden,
    )
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result.directory}: {len(result.assets)} assets{' (uploaded)' if result.uploaded else ''}")
    for asset in result.assets:
        click.echo(f"  {asset}")
    click.echo(
        f"check them with: (cd {shlex.quote(str(result.directory))} && sha256sum -c SHA256SUMS); hf/ "
        "is the Hugging Face layout (transformers.js, optimum)"
    )
