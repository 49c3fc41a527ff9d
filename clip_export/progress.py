"""Progress reporting: stages call a callback with a message; the CLI decides what to show."""
from __future__ import annotations

from typing import Callable

Progress = Callable[[str], None]


def silent(_: str) -> None:
    """The default callback: stages never print on their own."""
