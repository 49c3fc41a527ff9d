"""The thin Click layer: parse arguments, call one stage function, render its result."""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from clip_export import __version__
from clip_export.cli_parse import (
    CONTEXT,
    check_towers,
    json_option,
    model_arguments,
    quiet_option,
)
from clip_export.cli_render import (
    emit_json,
    human_bytes,
    progress_printer,
    table,
)
from clip_export.core.configs import ModelSpec
from clip_export.core.errors import ClipExportError
from clip_export.core.spec import DEFAULT_OPSET


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
        except BrokenPipeError:  # the reader went away (`| head -1`) after the work was done: not a failure
            with contextlib.suppress(OSError, ValueError):  # no second error when Python flushes at exit
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(0)
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
                f"Error: internal error ({type(exc).__name__}: {first}); rerun with CLIP_EXPORT_DEBUG=1 for "
                "the traceback",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group, context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="clip-export")
def main() -> None:
    """Export CLIP to ONNX, convert it, verify every artifact against torch, and benchmark it.

    \b
    Example:
      clip-export onnx ViT-B/32 --random-init
      clip-export verify artifacts/ViT-B-32
    """


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
    spec: ModelSpec,
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
    from clip_export.stages.export import export_onnx

    tower_list = check_towers(towers)
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
    from clip_export.core.models import list_models

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


from clip_export.cli_convert import fp16, int8, precision_commands, preprocessing_graph, q4, trt  # noqa: E402
from clip_export.cli_embed import compat_command, embed_command  # noqa: E402
from clip_export.cli_run import bench, pipeline, release, verify  # noqa: E402

# fp16, int8 and q4 take options of their own; any other converted precision in spec.PRECISION_SPECS gets a
# generated command (cli_convert.conversion_command), so adding one touches no CLI module.
for command in (verify, *precision_commands([fp16, int8, q4]), preprocessing_graph, trt, bench, pipeline, release):
    main.add_command(command)

main.add_command(embed_command)
main.add_command(compat_command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
