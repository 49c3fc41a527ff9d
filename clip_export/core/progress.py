"""Progress reporting: stages call a callback with a message; the CLI decides what to show."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str], None]


def silent(_: str) -> None:
    """The default callback: stages never print on their own."""


def rate_and_eta(done: int, left: int, seconds: float) -> str:
    """ "12.3 items/s, about 40 s left" from work done so far; unknown until something is done."""
    if done <= 0 or seconds <= 0:
        return "rate unknown yet"
    rate = done / seconds
    eta = left / rate
    when = f"{eta:.0f} s" if eta < 120 else f"{eta / 60:.0f} min" if eta < 7200 else f"{eta / 3600:.1f} h"
    return f"{rate:.1f} items/s, about {when} left"


def items_progress(counts: dict[str, int], failed: int, total: int, seconds: float) -> str:
    """embed's progress line, the same for both engines: items finished of all, then rate and time left."""
    finished = counts["embedded"] + counts["unchanged"] + failed
    return (
        f"{finished}/{total} items ({counts['embedded']} embedded, {failed} failed); "
        f"{rate_and_eta(counts['embedded'], total - finished, seconds)}"
    )
