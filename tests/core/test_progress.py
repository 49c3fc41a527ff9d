"""Progress lines: rate and time left from work done so far, and embed's line for both engines."""

from __future__ import annotations

from clip_export.core.progress import items_progress, rate_and_eta


def test_rate_and_time_left_are_unknown_until_something_is_done() -> None:
    assert rate_and_eta(0, 10, 5.0) == "rate unknown yet"
    assert rate_and_eta(20, 40, 10.0) == "2.0 items/s, about 20 s left"
    assert rate_and_eta(1, 600, 1.0) == "1.0 items/s, about 10 min left"


def test_embeds_line_counts_unchanged_and_failed_items_as_finished() -> None:
    line = items_progress({"embedded": 30, "unchanged": 50, "chunks": 0}, 20, 200, 10.0)
    assert line == "100/200 items (30 embedded, 20 failed); 3.0 items/s, about 33 s left"
