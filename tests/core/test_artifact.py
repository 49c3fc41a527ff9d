from __future__ import annotations

from pathlib import Path

import pytest

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.errors import ManifestError
from clip_export.core.manifest import read_manifest


def test_every_entry_an_export_writes_reads_back_unchanged(tiny_vit_dir: Path) -> None:
    for index, data in enumerate(read_manifest(tiny_vit_dir)["artifacts"]):
        entry = ArtifactEntry.from_json(data, f"artifacts[{index}]")
        assert entry.to_json() == data
        assert entry.format == "onnx" and entry.derived_from is None and "export_parity" in entry.details


def test_a_missing_key_is_named_with_the_entry() -> None:
    with pytest.raises(ManifestError, match=r"artifacts\[2\] has no sha256, tower"):
        ArtifactEntry.from_json({"path": "x.onnx", "bytes": 1, "precision": "fp32", "format": "onnx"}, "artifacts[2]")
    with pytest.raises(ManifestError, match="has no path, sha256"):
        ArtifactEntry.from_json("visual.onnx", "artifacts[0]")


def test_moving_keeps_everything_but_the_files() -> None:
    entry = ArtifactEntry(
        "staging/v.onnx",
        "a" * 64,
        10,
        "visual",
        "int8",
        "onnx",
        opset=20,
        derived_from={"path": "v.onnx", "sha256": "b" * 64},
        details={"conversion": {"mode": "dynamic"}},
    )
    moved = entry.moved({"path": "v.int8.onnx", "sha256": "c" * 64, "bytes": 11}, ())
    assert (moved.path, moved.sha256, moved.bytes) == ("v.int8.onnx", "c" * 64, 11)
    assert moved.to_json()["conversion"] == {"mode": "dynamic"} and moved.derived_from == entry.derived_from
    assert (
        "opset" not in ArtifactEntry("e.plan", "d" * 64, 1, "text", "fp16", "tensorrt").to_json()
    )  # engines have no opset
