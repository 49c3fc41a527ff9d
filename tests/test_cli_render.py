from __future__ import annotations

from clip_export.cli_render import cell, human_bytes, table


def test_sizes_are_binary_units() -> None:
    assert [human_bytes(n) for n in (512, 2048, 5 * 1024**2, 3 * 1024**3)] == ["512 B", "2.0 KiB", "5.0 MiB", "3.0 GiB"]


def test_cells_and_alignment() -> None:
    assert [cell(v) for v in (None, 0.0, 1.5e-5, 0.25, 123456.0, "x")] == [
        "-",
        "0",
        "1.50e-05",
        "0.250",
        "1.23e+05",
        "x",
    ]
    lines = table(["name", "ms"], [("visual.onnx", 1.5), ("t", None)]).splitlines()
    assert lines == ["name         ms", "-----------  -----", "visual.onnx  1.500", "t            -"]
