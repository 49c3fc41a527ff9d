"""The embed command as a user runs it: exit codes, the summary, --json, --quiet, usage errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clip_export.cli import main
from clip_export.core.evalset import BUNDLED_DIR


def test_embed_prints_a_summary_and_exits_1_naming_the_failed_items(tiny_vit_int8_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((BUNDLED_DIR / "images").glob("*.jpg"))[:4]:
        shutil.copy(path, photos / path.name)
    (photos / "broken.jpg").write_bytes(b"")
    out = tmp_path / "index"
    done = CliRunner().invoke(
        main, ["embed", str(tiny_vit_int8_dir), str(photos), "--out", str(out), "--batch-size", "2"]
    )
    assert done.exit_code == 1
    assert "4 embedded, 0 unchanged, 1 failed of 5 items" in done.output
    assert "broken.jpg" in done.output and "the file is empty (0 bytes)" in done.output
    assert (
        done.output.rstrip().splitlines()[-1]
        == f"Error: 1 of 5 items could not be embedded; {out / 'errors.parquet'} lists them with the reason"
    )
    assert "5 items, 0 already in" in done.output  # progress, on stderr
    (photos / "broken.jpg").unlink()
    again = CliRunner().invoke(
        main, ["embed", str(tiny_vit_int8_dir), str(photos), "--out", str(out), "--json", "--quiet"]
    )
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output)
    assert (summary["embedded"], summary["unchanged"], summary["failed"], summary["precision"]) == (0, 4, 0, "int8")


@pytest.mark.usefixtures("file_stats_at_once")
def test_a_rerun_says_how_many_files_it_did_not_read_and_rehash_reads_them(
    tiny_vit_int8_dir: Path, tmp_path: Path
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for path in sorted((BUNDLED_DIR / "images").glob("*.jpg"))[:3]:
        shutil.copy(path, photos / path.name)
    command = ["embed", str(tiny_vit_int8_dir), str(photos), "--out", str(tmp_path / "index")]
    assert CliRunner().invoke(main, command).exit_code == 0
    again = CliRunner().invoke(main, command)
    assert again.exit_code == 0, again.output
    assert "0 embedded, 3 unchanged (3 not read: same size and times), 0 failed of 3 items" in again.output
    rehashed = CliRunner().invoke(main, [*command, "--rehash"])
    assert rehashed.exit_code == 0, rehashed.output
    assert "0 embedded, 3 unchanged, 0 failed of 3 items" in rehashed.output
    assert "(--rehash: every file is read)" in rehashed.output  # progress, on stderr


def test_usage_errors_exit_2_and_bad_sources_exit_1(tiny_vit_int8_dir: Path, tmp_path: Path) -> None:
    assert CliRunner().invoke(main, ["embed", str(tiny_vit_int8_dir), str(tmp_path)]).exit_code == 2  # no --out
    assert (
        CliRunner()
        .invoke(
            main, ["embed", str(tiny_vit_int8_dir), str(tmp_path), "--out", str(tmp_path / "o"), "--batch-size", "0"]
        )
        .exit_code
        == 2
    )
    missing = CliRunner().invoke(
        main, ["embed", str(tmp_path / "nothing"), str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 1 and missing.output.startswith("Error: ") and "Traceback" not in missing.output
