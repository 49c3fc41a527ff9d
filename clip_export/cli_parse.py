"""How the CLI reads its options: comma lists, thresholds, batch profiles, towers; a bad value is a
usage error (exit 2) naming the option."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from clip_export.core.spec import EXECUTION_PROVIDERS, TOWERS, find_provider

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress messages on stderr.")


def _path_option(flag: str, dest: str, metavar: str, help: str) -> Callable[..., Any]:
    return click.option(flag, dest, metavar=metavar, type=click.Path(path_type=Path), help=help)


def local_sources_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """--weights, --tokenizer and --text-config for a torch rebuild of an export, passed on as one
    `sources` value (core.configs.LocalSources): a path in manifest.json is never read."""

    @functools.wraps(func)
    def command(
        *args: Any, weights: Path | None, tokenizer_dir: Path | None, text_config_dir: Path | None, **kw: Any
    ) -> Any:
        from clip_export.core.configs import LocalSources

        return func(*args, sources=LocalSources(weights, tokenizer_dir, text_config_dir), **kw)

    for option in (
        _path_option(
            "--text-config",
            "text_config_dir",
            "DIR",
            "The local transformers config directory DIR was exported with (--text-config), for the torch model.",
        ),
        _path_option(
            "--tokenizer",
            "tokenizer_dir",
            "DIR",
            "The local tokenizer directory DIR was exported with (--tokenizer), for the torch model.",
        ),
        _path_option(
            "--weights",
            "weights",
            "PATH",
            "The local checkpoint (or Hugging Face directory) DIR was exported from, for the torch model; "
            "a path in manifest.json is never read.",
        ),
    ):
        command = option(command)
    return command


def dirs_argument(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.argument("dirs", nargs=-1, type=click.Path(path_type=Path))(func)


def resolve_dirs(dirs: Sequence[Path]) -> list[Path]:
    from clip_export.core.manifest import model_dirs

    found: list[Path] = []
    for d in dirs or [Path("artifacts")]:
        found.extend(model_dirs(d))
    return found


def model_arguments(func: Callable[..., Any]) -> Callable[..., Any]:
    """MODEL and where its weights come from, resolved once into the `spec` (core.configs.ModelSpec)
    the command receives: the same for `onnx` and `pipeline`."""

    @functools.wraps(func)
    def command(
        *args: Any,
        model: str,
        pretrained: str | None,
        weights: Path | None,
        random_init: bool,
        seed: int,
        tokenizer_dir: Path | None,
        text_config_dir: Path | None,
        **kw: Any,
    ) -> Any:
        from clip_export.core.models import resolve

        spec = resolve(
            model,
            pretrained=pretrained,
            weights=weights,
            random_init=random_init,
            seed=seed,
            tokenizer=tokenizer_dir,
            text_config=text_config_dir,
        )
        return func(*args, spec=spec, **kw)

    for option in reversed(
        [
            click.argument("model"),
            click.option(
                "--pretrained",
                metavar="TAG",
                help="open_clip pretrained tag (default: the model's first tag, 'openai' for OpenAI names).",
            ),
            _path_option(
                "--weights",
                "weights",
                "PATH",
                "Local checkpoint (.pt, .bin, .safetensors) or Hugging Face CLIP directory.",
            ),
            click.option(
                "--random-init",
                is_flag=True,
                help="The real architecture with seeded random weights (offline demos, tests, benchmarks).",
            ),
            click.option("--seed", type=int, default=0, show_default=True, help="Seed for --random-init."),
            _path_option(
                "--tokenizer",
                "tokenizer_dir",
                "DIR",
                "Offline: a directory with the model's tokenizer.json (SigLIP, multilingual text towers).",
            ),
            _path_option(
                "--text-config",
                "text_config_dir",
                "DIR",
                "Offline: a local transformers config directory for a Hugging Face text tower (xlm-roberta, "
                "roberta, nllb, mt5).",
            ),
        ]
    ):
        command = option(command)
    return command


def split_csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_thresholds(values: Sequence[str]) -> dict[str, float]:
    parsed = {}
    for item in values:
        key, sep, value = item.partition("=")
        try:
            parsed[key.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"expected KEY=NUMBER, got '{item}'", param_hint="--threshold") from None
        if not sep:
            raise click.BadParameter(f"expected KEY=NUMBER, got '{item}'", param_hint="--threshold")
    return parsed


def check_towers(towers: str) -> list[str]:
    chosen = split_csv(towers)
    bad = [t for t in chosen if t not in TOWERS]
    if bad or not chosen:
        raise click.BadParameter(
            f"unknown tower(s) {', '.join(bad) or '(none)'}; choose from {', '.join(TOWERS)}", param_hint="--towers"
        )
    return chosen


def parse_profile(value: str) -> tuple[int, int, int]:
    try:
        lo, opt, hi = (int(v) for v in value.split(":"))
    except ValueError:
        raise click.BadParameter(f"expected MIN:OPT:MAX, got '{value}'", param_hint="--batch") from None
    return lo, opt, hi


def int_list(value: str, hint: str) -> list[int]:
    try:
        return [int(v) for v in split_csv(value)]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got '{value}'", param_hint=hint) from None


def _parse_providers(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    """Providers are normalised once, here: every spelling becomes the registry's short name."""
    chosen = split_csv(value)
    unknown = [p for p in chosen if find_provider(p) is None]
    if unknown or not chosen:
        raise click.BadParameter(
            f"unknown provider(s) {', '.join(unknown) or '(none)'}; choose from "
            + ", ".join(p.short for p in EXECUTION_PROVIDERS),
            param_hint="--providers",
        )
    return list(dict.fromkeys(find_provider(p).short for p in chosen))


def providers_option(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--providers, its choices listed from the registry in spec.py."""
    names = ", ".join(p.short for p in EXECUTION_PROVIDERS)
    return click.option(
        "--providers",
        default=EXECUTION_PROVIDERS[0].short,
        show_default=True,
        callback=_parse_providers,
        help=f"{purpose} Comma-separated: {names}.",
    )
