from __future__ import annotations

import click
import pytest

from clip_export.cli_parse import check_towers, int_list, parse_profile, parse_thresholds, split_csv


def test_values_are_read() -> None:
    assert split_csv(" cpu, ,cuda ") == ["cpu", "cuda"]
    assert parse_thresholds(["fp16.min_cosine=0.99", "top5_overlap = 0.5"]) == {
        "fp16.min_cosine": 0.99,
        "top5_overlap": 0.5,
    }
    assert parse_profile("1:8:64") == (1, 8, 64)
    assert int_list("1,8", "--batch-sizes") == [1, 8]
    assert check_towers("text") == ["text"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_thresholds(["min_cosine"]), "expected KEY=NUMBER, got 'min_cosine'"),
        (lambda: parse_thresholds(["min_cosine=high"]), "expected KEY=NUMBER, got 'min_cosine=high'"),
        (lambda: parse_profile("1:64"), "expected MIN:OPT:MAX, got '1:64'"),
        (lambda: int_list("1,eight", "--batch-sizes"), "expected comma-separated integers, got '1,eight'"),
        (lambda: check_towers("visual,audio"), "unknown tower(s) audio; choose from visual, text"),
        (lambda: check_towers(" , "), "unknown tower(s) (none)"),
    ],
)
def test_a_bad_value_is_a_usage_error_naming_it(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(click.BadParameter, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()
