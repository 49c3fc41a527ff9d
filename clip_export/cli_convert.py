"""`clip-export fp16|int8|q4|preprocessing-graph|trt`: parse, call one conversion, render (cli.py registers them)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from clip_export.cli_parse import (
    CONTEXT,
    check_towers,
    dirs_argument,
    json_option,
    parse_profile,
    quiet_option,
    resolve_dirs,
    split_csv,
)
from clip_export.cli_render import (
    emit_json,
    human_bytes,
    progress_printer,
    render_conversion,
    table,
)
from clip_export.core.spec import INT8_SCHEME, Q4_EMBEDDING_BITS, Q4_SCHEME, Int8Scheme, PrecisionSpec


def _towers_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--towers", default="visual,text", show_default=True, help="Comma-separated towers to convert."
    )(func)


def conversion_command(precision: PrecisionSpec) -> click.Command:
    """`clip-export NAME DIR... [--towers] [--force]` for a converted precision whose converter takes no
    options of its own: the registry row is all a new precision needs on the command line."""

    @click.command(precision.name, context_settings=CONTEXT, help=_conversion_help(precision))
    @dirs_argument
    @_towers_option
    @click.option("--force", is_flag=True, help=f"Rebuild a {precision.name} artifact that already exists.")
    @json_option
    @quiet_option
    def command(dirs: Sequence[Path], towers: str, force: bool, as_json: bool, quiet: bool) -> None:
        from clip_export.pipeline import converter

        convert = converter(precision)
        chosen = check_towers(towers)
        render_conversion(
            [
                convert(d, towers=chosen, force=force, progress=progress_printer(quiet or as_json))
                for d in resolve_dirs(dirs)
            ],
            as_json,
        )

    return command


def _conversion_help(precision: PrecisionSpec) -> str:
    return (
        f"Convert the fp32 ONNX towers to {precision.name} ({precision.converter}), verified before they are kept."
        f"\n\n\b\nExample:\n  clip-export {precision.name} artifacts/ViT-B-32"
    )


def precision_commands(hand_written: Sequence[click.Command]) -> list[click.Command]:
    """One command per converted precision of spec.PRECISION_SPECS: its own where it takes options, else
    the generated one; a hand-written command for a precision the registry lacks is an error here."""
    from clip_export.core.spec import PRECISION_SPECS

    own = {c.name: c for c in hand_written}
    stray = sorted(set(own) - {p.name for p in PRECISION_SPECS.values() if p.converted})
    if stray:
        raise RuntimeError(f"conversion commands without a registry row in spec.PRECISION_SPECS: {', '.join(stray)}")
    return [own.get(p.name) or conversion_command(p) for p in PRECISION_SPECS.values() if p.converted]


@click.command(context_settings=CONTEXT)
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
    from clip_export.stages.convert import convert_fp16

    chosen = check_towers(towers)
    render_conversion(
        [
            convert_fp16(d, towers=chosen, fuse=fuse, force=force, progress=progress_printer(quiet or as_json))
            for d in resolve_dirs(dirs)
        ],
        as_json,
    )


@click.command(context_settings=CONTEXT)
@dirs_argument
@_towers_option
@click.option(
    "--per-channel/--per-tensor",
    default=None,
    help="Weight scales per output channel (the default; measured more faithful) or per tensor.",
)
@click.option(
    "--weight-type",
    type=click.Choice(["QUInt8", "QInt8"]),
    default=None,
    help="Build only this family: QUInt8 (visual.uint8.onnx) holds on every x86 tier; QInt8 (visual.int8.onnx) "
    "is faster with VNNI/AMX but saturates on AVX2 without it. Default: both, each verified (docs/convert.md).",
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
    per_channel: bool | None,
    weight_type: str | None,
    reduce_range: bool,
    exclude_nodes: Sequence[str],
    force: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Quantize MatMul/Gemm weights to INT8 for CPU serving (dynamic activations), verified before kept.

    Without --weight-type or --reduce-range: one artifact per kernel family, QInt8 (visual.int8.onnx,
    for CPUs with VNNI or AMX) and QUInt8 (visual.uint8.onnx, every x86 tier); ClipOnnx serves the
    one this CPU's flags call for. On a CPU without VNNI the QInt8 one is not built (it cannot be
    verified there). Where a tower's plain files fail their gate, the QUInt8 one is retried blockwise
    (8-bit MatMulNBits, every MatMul quantized), each family with its few outlier activation
    channels split off in float (every MatMul still INT8), and the QUInt8 one last with its most
    sensitive MatMuls kept float; a line says what was kept.

    \b
    Example:
      clip-export int8 artifacts/ViT-B-32 --towers visual
    """
    from clip_export.stages.quantize8.quantize8 import quantize_int8

    chosen = check_towers(towers)
    scheme = (
        Int8Scheme(
            weight_type or INT8_SCHEME.weight_type, per_channel=per_channel is not False, reduce_range=reduce_range
        )
        if weight_type or reduce_range
        else None
    )
    render_conversion(
        [
            quantize_int8(
                d,
                towers=chosen,
                scheme=scheme,
                per_channel=per_channel,
                exclude_nodes=exclude_nodes,
                force=force,
                progress=progress_printer(quiet or as_json),
            )
            for d in resolve_dirs(dirs)
        ],
        as_json,
    )


@click.command(context_settings=CONTEXT)
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

    from clip_export.stages.quantize4 import quantize_q4

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


@click.command("preprocessing-graph", context_settings=CONTEXT)
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
    from clip_export.stages.preprocess_stage import add_preprocessing

    chosen = split_csv(precisions) if precisions else None
    render_conversion(
        [
            r
            for d in resolve_dirs(dirs)
            for r in add_preprocessing(d, precisions=chosen, force=force, progress=progress_printer(quiet or as_json))
        ],
        as_json,
    )


@click.command(context_settings=CONTEXT)
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
    from clip_export.stages.tensorrt import build_engines

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
