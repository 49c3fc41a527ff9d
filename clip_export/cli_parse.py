"""How the CLI reads its options: comma lists, thresholds, batch profiles, towers; a bad value is a
usage error (exit 2) naming the option."""

from __future__ import annotations

from collections.abc import Sequence

import click

from .spec import TOWERS


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
