"""The thin Click layer: parse arguments, call one stage function, render its result."""

from __future__ import annotations

import os
import shlex
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from . import __version__
from .cli_parse import check_towers, int_list, parse_profile, parse_thresholds, split_csv
from .cli_render import (
    bench_text,
    emit_json,
    human_bytes,
    pipeline_text,
    progress_printer,
    render_conversion,
    table,
    verify_text,
)
from .errors import ClipExportError
from .spec import DEFAULT_BENCH_MAX_TIME_S, DEFAULT_OPSET, INT8_SCHEME, Q4_EMBEDDING_BITS, Q4_SCHEME, Int8Scheme

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Maps our errors to one `Error:` line and exit 1; Click's usage errors keep exit 2. Under
    CLIP_EXPORT_DEBUG=1 the traceback comes first, with the library error ours was raised from."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipExportError as exc:
            if os.environ.get("CLIP_EXPORT_DEBUG"):
                click.echo("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip(), err=True)
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)
        except KeyboardInterrupt:
            click.echo("Error: interrupted; nothing partial was kept", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # an unexpected failure still gets one line; the traceback is opt-in
            if os.environ.get("CLIP_EXPORT_DEBUG"):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            click.echo(
                f"Error: internal error ({type(exc).__name__}: {first}); rerun with CLIP_EXPORT_DEBUG=1 for the traceback",
                err=True,
            )
            ctx.exit(1)


json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")


def dirs_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("dirs", nargs=-1, type=click.Path(path_type=Path))(func)


def resolve_dirs(dirs: Sequence[Path]) -> list[Path]:
    from .manifest import model_dirs

    found: list[Path] = []
    for d in dirs or [Path("artifacts")]:
        found.extend(model_dirs(d))
    return found


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="clip-export")
def main() -> None:
    """Export CLIP to ONNX, convert it, verify every artifact against torch, and benchmark it.

    \b
    Example:
      clip-export onnx ViT-B/32 --random-init
      clip-export verify artifacts/ViT-B-32
    """


def model_arguments(func: Callable[..., Any]) -> Callable[..., Any]:
    """MODEL and where its weights come from: the same for `onnx` and `pipeline`."""
    for option in reversed(
        [
            click.argument("model"),
            click.option(
                "--pretrained",
                metavar="TAG",
                help="open_clip pretrained tag (default: the model's first tag, 'openai' for OpenAI names).",
            ),
            click.option(
                "--weights",
                metavar="PATH",
                type=click.Path(path_type=Path),
                help="Local checkpoint (.pt, .bin, .safetensors) or Hugging Face CLIP directory.",
            ),
            click.option(
                "--random-init",
                is_flag=True,
                help="The real architecture with seeded random weights (offline demos, tests, benchmarks).",
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init."),
            click.option(
                "--tokenizer",
                "tokenizer_dir",
                metavar="DIR",
                type=click.Path(path_type=Path),
                help="Offline: a directory with the model's tokenizer.json (SigLIP, multilingual text towers).",
            ),
            click.option(
                "--text-config",
                "text_config_dir",
                metavar="DIR",
                type=click.Path(path_type=Path),
                help="Offline: a local transformers config directory for a Hugging Face text tower (xlm-roberta, roberta, nllb, mt5).",
            ),
        ]
    ):
        func = option(func)
    return func


@main.command(context_settings=CONTEXT)
@model_arguments
@click.option("--towers", default="visual,text", show_default=True, help="Comma-separated towers to export.")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Output root; the model goes to OUT/<model-slug>/.",
)
@click.option("--normalize", is_flag=True, help="Bake L2 normalisation into the graphs.")
@click.option(
    "--external-data/--no-external-data",
    default=None,
    help="Force ONNX external data on or off (default: on for towers over 2 GiB less 64 MiB).",
)
@click.option("--force", is_flag=True, help="Replace an existing artifact directory.")
@json_option
@quiet_option
def onnx(
    model: str,
    pretrained: str | None,
    weights: Path | None,
    random_init: bool,
    seed: int,
    tokenizer_dir: Path | None,
    text_config_dir: Path | None,
    towers: str,
    opset: int,
    out: Path,
    normalize: bool,
    external_data: bool | None,
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Export the visual and text towers of MODEL to ONNX, checked against torch fp32.

    MODEL is an OpenAI name (ViT-B/32, ViT-L/14@336px, RN50), an open_clip architecture
    (ViT-H-14 or ViT-H-14:laion2b_s32b_b79k), or a local Hugging Face CLIP directory.

    \b
    Example:
      clip-export onnx ViT-B/32 --random-init --out artifacts
    """
    from .export import export_onnx
    from .models import resolve

    tower_list = check_towers(towers)
    spec = resolve(
        model,
        pretrained=pretrained,
        weights=weights,
        random_init=random_init,
        seed=seed,
        tokenizer=tokenizer_dir,
        text_config=text_config_dir,
    )
    result = export_onnx(
        spec,
        out=out,
        towers=tower_list,
        opset=opset,
        normalize=normalize,
        force=force,
        external_data=external_data,
        progress=progress_printer(quiet or as_json),
    )
    if as_json:
        emit_json(result)
        return
    rows = [
        (
            t.tower,
            t.path,
            human_bytes(t.bytes),
            len(t.external_data),
            t.parity_mean_abs,
            t.parity_max_abs,
            f"{t.seconds:.1f}s",
        )
        for t in result.towers
    ]
    click.echo(table(["tower", "path", "size", "ext. data files", "mean |Δ| (norm.)", "max |Δ| (norm.)", "time"], rows))
    click.echo(
        f"\nWrote {result.manifest_path} in {result.seconds:.1f}s. Next: clip-export verify {shlex.quote(str(result.model_dir))}"
    )


@main.command(context_settings=CONTEXT)
@click.option("--all", "show_all", is_flag=True, help="Also list every open_clip architecture, not only OpenAI names.")
@json_option
def models(show_all: bool, as_json: bool) -> None:
    """List the model names `onnx` accepts, and which weights are available offline.

    \b
    Example:
      clip-export models --all
    """
    from .models import list_models

    listing = list_models(include_archs=show_all or as_json)
    if as_json:
        emit_json(listing)
        return
    rows = [
        (m.name, m.arch, len(m.tags), ", ".join(m.cached_tags) or "none (use --weights or --random-init)")
        for m in listing
    ]
    click.echo(table(["name", "open_clip architecture", "pretrained tags", "weights in local cache"], rows))
    if not show_all:
        click.echo("\n(--all lists every open_clip architecture; use ARCH:TAG to pick weights)")


@main.command(context_settings=CONTEXT)
@dirs_argument
@click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu, cuda, tensorrt.")
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
@json_option
@quiet_option
def verify(
    dirs: Sequence[Path],
    providers: str,
    reference: str,
    images: Path | None,
    texts: Path | None,
    thresholds: Sequence[str],
    precisions: str | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Check every artifact in DIR against the fp32 torch reference; exit 1 if any metric fails.

    DIR is a model's artifact directory; without it, every one under ./artifacts.

    \b
    Example:
      clip-export verify artifacts/ViT-B-32 --providers cpu
    """
    from .verify import verify as run_verify

    overrides = parse_thresholds(thresholds)
    wanted = set(split_csv(precisions)) if precisions else None
    results = []
    for model_dir in resolve_dirs(dirs):
        results.append(
            run_verify(
                model_dir,
                providers=split_csv(providers),
                reference=reference,
                images=images,
                texts=texts,
                thresholds=overrides,
                only=(lambda e: e["precision"] in wanted) if wanted else None,
                progress=progress_printer(quiet or as_json),
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


def _towers_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--towers", default="visual,text", show_default=True, help="Comma-separated towers to convert."
    )(func)


@main.command(context_settings=CONTEXT)
@dirs_argument
@_towers_option
@click.option(
    "--fuse", is_flag=True, help="Run onnxruntime's transformer optimizer first and report which fusions happened."
)
@click.option("--force", is_flag=True, help="Rebuild an fp16 artifact that already exists.")
@json_option
@quiet_option
def fp16(dirs: Sequence[Path], towers: str, fuse: bool, force: bool, as_json: bool, quiet: bool) -> None:
    """Convert the fp32 ONNX towers to fp16 (fp32 inputs and outputs), verified before they are kept.

    \b
    Example:
      clip-export fp16 artifacts/ViT-L-14
    """
    from .convert import convert_fp16

    chosen = check_towers(towers)
    render_conversion(
        [
            convert_fp16(d, towers=chosen, fuse=fuse, force=force, progress=progress_printer(quiet or as_json))
            for d in resolve_dirs(dirs)
        ],
        as_json,
    )


@main.command(context_settings=CONTEXT)
@dirs_argument
@_towers_option
@click.option(
    "--per-channel/--per-tensor",
    default=True,
    show_default=True,
    help="Weight scales per output channel (measured more faithful) or per tensor.",
)
@click.option(
    "--weight-type",
    type=click.Choice(["QUInt8", "QInt8"]),
    default=INT8_SCHEME.weight_type,
    show_default=True,
    help="QUInt8 holds on every x86 tier; QInt8 is faster with VNNI but saturates on AVX2 without it (docs/convert.md).",
)
@click.option(
    "--reduce-range", is_flag=True, help="7-bit weights: keeps QInt8 from saturating on AVX2, at some fidelity."
)
@click.option("--exclude", "exclude_nodes", multiple=True, metavar="NODE", help="Keep this node in float. Repeatable.")
@click.option("--force", is_flag=True, help="Rebuild an INT8 artifact that already exists.")
@json_option
@quiet_option
def int8(
    dirs: Sequence[Path],
    towers: str,
    per_channel: bool,
    weight_type: str,
    reduce_range: bool,
    exclude_nodes: Sequence[str],
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Quantize MatMul/Gemm weights to INT8 for CPU serving (dynamic activations), verified before kept.

    \b
    Example:
      clip-export int8 artifacts/ViT-B-32 --towers visual
    """
    from .convert import quantize_int8

    chosen = check_towers(towers)
    scheme = Int8Scheme(weight_type, per_channel=per_channel, reduce_range=reduce_range)
    render_conversion(
        [
            quantize_int8(
                d,
                towers=chosen,
                scheme=scheme,
                exclude_nodes=exclude_nodes,
                force=force,
                progress=progress_printer(quiet or as_json),
            )
            for d in resolve_dirs(dirs)
        ],
        as_json,
    )


@main.command(context_settings=CONTEXT)
@dirs_argument
@_towers_option
@click.option(
    "--block-size",
    type=click.Choice(["16", "32", "64", "128"]),
    default=str(Q4_SCHEME.block_size),
    show_default=True,
    help="Weights per 4-bit scale.",
)
@click.option(
    "--embedding",
    "embedding_bits",
    type=click.Choice([str(b) if b else "float" for b in Q4_EMBEDDING_BITS]),
    default=str(Q4_SCHEME.embedding_bits),
    show_default=True,
    help="The token embedding's blocks: 8-bit, 4-bit (opset 21) or float.",
)
@click.option("--force", is_flag=True, help="Rebuild a 4-bit artifact that already exists.")
@json_option
@quiet_option
def q4(
    dirs: Sequence[Path], towers: str, block_size: str, embedding_bits: str, force: bool, as_json: bool, quiet: bool
) -> None:
    """Quantize MatMul weights to 4 bits (onnxruntime MatMulNBits, transformers.js's "q4") and the
    token embedding to 8- or 4-bit blocks (GatherBlockQuantized), verified before kept.

    \b
    Example:
      clip-export q4 artifacts/ViT-B-32
    """
    import dataclasses

    from .quantize4 import quantize_q4

    chosen = check_towers(towers)
    scheme = dataclasses.replace(
        Q4_SCHEME, block_size=int(block_size), embedding_bits=None if embedding_bits == "float" else int(embedding_bits)
    )
    render_conversion(
        [
            quantize_q4(d, towers=chosen, scheme=scheme, force=force, progress=progress_printer(quiet or as_json))
            for d in resolve_dirs(dirs)
        ],
        as_json,
    )


@main.command("preprocessing-graph", context_settings=CONTEXT)
@dirs_argument
@click.option(
    "--precisions",
    default=None,
    help="Visual precisions to wrap (comma-separated; default: every visual ONNX artifact).",
)
@click.option("--force", is_flag=True, help="Rebuild a preprocessing graph that already exists.")
@json_option
@quiet_option
def preprocessing_graph(dirs: Sequence[Path], precisions: str | None, force: bool, as_json: bool, quiet: bool) -> None:
    """Visual artifacts that take a decoded uint8 RGB image of any size and do the resize, crop and
    normalisation inside the graph, verified from the raw evaluation images before they are kept.

    \b
    Example:
      clip-export preprocessing-graph artifacts/ViT-B-32 --precisions fp32,int8
    """
    from .preprocess_stage import add_preprocessing

    chosen = split_csv(precisions) if precisions else None
    render_conversion(
        [
            r
            for d in resolve_dirs(dirs)
            for r in add_preprocessing(d, precisions=chosen, force=force, progress=progress_printer(quiet or as_json))
        ],
        as_json,
    )


@main.command(context_settings=CONTEXT)
@dirs_argument
@_towers_option
@click.option(
    "--fp16", "use_fp16", is_flag=True, help="Build from the verified fp16 ONNX (strongly typed on TensorRT 10 and 11)."
)
@click.option(
    "--batch",
    "batch",
    default="1:1:64",
    show_default=True,
    help="Optimization profile for the batch axis, MIN:OPT:MAX.",
)
@click.option(
    "--workspace", "workspace_gb", type=float, default=4.0, show_default=True, help="Builder workspace in GiB."
)
@click.option("--epcontext", is_flag=True, help="Also write an onnxruntime EPContext model that wraps each engine.")
@click.option("--force", is_flag=True, help="Rebuild an engine that already exists.")
@json_option
@quiet_option
def trt(
    dirs: Sequence[Path],
    towers: str,
    use_fp16: bool,
    batch: str,
    workspace_gb: float,
    epcontext: bool,
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Build one TensorRT engine (.plan) per tower; needs a CUDA GPU and 'clip-export[tensorrt]'.

    \b
    Example:
      clip-export fp16 artifacts/ViT-L-14 && clip-export trt artifacts/ViT-L-14 --fp16
    """
    from .tensorrt import build_engines

    chosen = check_towers(towers)
    profile = parse_profile(batch)
    results = [
        build_engines(
            d,
            fp16=use_fp16,
            batch=profile,
            workspace_gb=workspace_gb,
            towers=chosen,
            epcontext=epcontext,
            force=force,
            progress=progress_printer(quiet or as_json),
        )
        for d in resolve_dirs(dirs)
    ]
    if as_json:
        emit_json(results)
        return
    for r in results:
        click.echo(f"{r.model_dir}: TensorRT {r.tensorrt_version} on {r.gpu} (sm {r.compute_capability})")
        click.echo(
            table(
                ["tower", "engine", "from", "size", "verify", "EPContext", "time"],
                [
                    (
                        e.tower,
                        e.path,
                        e.source,
                        human_bytes(e.bytes),
                        e.verdict.upper(),
                        e.epcontext,
                        f"{e.seconds:.1f}s",
                    )
                    for e in r.engines
                ],
            )
        )


@main.command(context_settings=CONTEXT)
@dirs_argument
@click.option("--providers", default="cpu", show_default=True, help="Comma-separated: cpu, cuda, tensorrt.")
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
    help="Seconds for the whole run; rows get less time as it runs out, and rows it does not reach are listed as skipped.",
)
@click.option(
    "--baselines/--no-baselines",
    default=True,
    show_default=True,
    help="torch eager fp32 and bf16 autocast (and cuda fp16 on GPU) in the same run.",
)
@click.option("--compile", "compile_baseline", is_flag=True, help="Add the torch.compile baseline (compiles slowly).")
@click.option("--fused-baseline", is_flag=True, help="Add fp32 rows run through onnxruntime's transformer optimizer.")
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
    providers: str,
    batch_sizes: str,
    towers: str,
    precisions: str | None,
    threads: int | None,
    budget: float,
    max_time: float,
    baselines: bool,
    compile_baseline: bool,
    fused_baseline: bool,
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
    from .bench import bench as run_bench

    chosen = check_towers(towers)
    sizes = int_list(batch_sizes, "--batch-sizes")
    results = [
        run_bench(
            d,
            providers=split_csv(providers),
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
        )
        for d in resolve_dirs(dirs)
    ]
    if as_json:
        emit_json(results)
        return
    for r in results:
        click.echo(bench_text(r))


@main.command(context_settings=CONTEXT)
@model_arguments
@click.option("--precisions", default="fp32,fp16,int8", show_default=True, help="Which precisions to produce and gate.")
@click.option("--trt", "use_trt", is_flag=True, help="Also build TensorRT engines (needs a GPU).")
@click.option("--providers", default="cpu", show_default=True, help="Providers for verify and bench.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("artifacts"), show_default=True)
@click.option("--force", is_flag=True, help="Replace existing artifacts.")
@json_option
@quiet_option
def pipeline(
    model: str,
    pretrained: str | None,
    weights: Path | None,
    random_init: bool,
    seed: int,
    tokenizer_dir: Path | None,
    text_config_dir: Path | None,
    precisions: str,
    use_trt: bool,
    providers: str,
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
    from .models import resolve
    from .pipeline import run_pipeline

    spec = resolve(
        model,
        pretrained=pretrained,
        weights=weights,
        random_init=random_init,
        seed=seed,
        tokenizer=tokenizer_dir,
        text_config=text_config_dir,
    )
    result = run_pipeline(
        spec,
        out=out,
        precisions=split_csv(precisions),
        trt=use_trt,
        providers=split_csv(providers),
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


@main.command(context_settings=CONTEXT)
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
    help="Embed the bundled set with transformers.js from hf/ and put the cosines in the model card (auto: where Node and the npm packages are installed).",
)
@json_option
@quiet_option
def release(
    dirs: Sequence[Path], tag: str, out: Path, upload: bool, client_check: str, as_json: bool, quiet: bool
) -> None:
    """Write release assets (artifacts, SHA256SUMS, manifest.json, MODEL_CARD.md, and hf/: the Hugging Face layout) for verified artifacts.

    Several DIRs of one model (engines built on different GPUs) merge into one release.

    \b
    Example:
      clip-export release artifacts/ViT-B-32 --tag v1.0.0 --out dist
    """
    from .release import release as make_release

    chosen = resolve_dirs(dirs)
    if not dirs and len(chosen) > 1:
        raise ClipExportError(
            f"artifacts/ holds {len(chosen)} models ({', '.join(d.name for d in chosen)}); name the DIR to release"
        )
    result = make_release(
        chosen, tag=tag, out=out, upload=upload, client_check=client_check, progress=progress_printer(quiet or as_json)
    )
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result.directory}: {len(result.assets)} assets{' (uploaded)' if result.uploaded else ''}")
    for asset in result.assets:
        click.echo(f"  {asset}")
    click.echo(
        f"check them with: (cd {shlex.quote(str(result.directory))} && sha256sum -c SHA256SUMS); hf/ is the Hugging Face layout (transformers.js, optimum)"
    )


from .cli_embed import compat_command, embed_command  # noqa: E402

main.add_command(embed_command)
main.add_command(compat_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
