from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from clip_export.core.artifact import ArtifactEntry, FileRecord, Manifest, TensorRecord, declared_io
from clip_export.core.errors import ManifestError
from clip_export.core.manifest import MANIFEST_NAME, read_manifest, write_manifest


def test_every_entry_an_export_writes_reads_back_unchanged(tiny_vit_dir: Path) -> None:
    on_disk = json.loads((tiny_vit_dir / MANIFEST_NAME).read_text())
    manifest = read_manifest(tiny_vit_dir)
    assert [entry.to_json() for entry in manifest.artifacts] == on_disk["artifacts"]
    for entry in manifest.artifacts:
        assert entry.format == "onnx" and entry.derived_from is None and entry.detail("export_parity")
        assert isinstance(entry.inputs[0], TensorRecord) and entry.inputs[0].shape[0] == "batch"


def test_a_manifest_read_and_written_back_is_the_same_file(tiny_vit_copy: Path) -> None:
    """The JSON on disk is the contract other tools read: the typed round trip changes no byte."""
    before = (tiny_vit_copy / MANIFEST_NAME).read_bytes()
    write_manifest(tiny_vit_copy, read_manifest(tiny_vit_copy))
    assert (tiny_vit_copy / MANIFEST_NAME).read_bytes() == before


def test_a_manifest_written_before_typed_entries_still_reads(tiny_vit_copy: Path) -> None:
    """Schema 1 manifests of earlier releases: an entry without inputs, outputs, opset or external_data."""
    data = json.loads((tiny_vit_copy / MANIFEST_NAME).read_text())
    for entry in data["artifacts"]:
        for key in ("inputs", "outputs", "opset", "external_data", "derived_from"):
            entry.pop(key, None)
    (tiny_vit_copy / MANIFEST_NAME).write_text(json.dumps(data))
    manifest = read_manifest(tiny_vit_copy)
    assert [a.path for a in manifest.artifacts] == ["visual.onnx", "text.onnx"]
    assert manifest.artifacts[0].external_data == () and manifest.artifacts[0].opset is None


def test_a_missing_key_is_named_with_the_entry() -> None:
    with pytest.raises(ManifestError, match=r"artifacts\[2\] has no sha256, tower"):
        ArtifactEntry.from_json({"path": "x.onnx", "bytes": 1, "precision": "fp32", "format": "onnx"}, "artifacts[2]")
    with pytest.raises(ManifestError, match="has no path, sha256"):
        ArtifactEntry.from_json("visual.onnx", "artifacts[0]")
    with pytest.raises(ManifestError, match=r"a\.external_data\[0\] has no sha256"):
        ArtifactEntry.from_json(
            {**ArtifactEntry("v", "0" * 64, 1, "visual", "fp32", "onnx").to_json(), "external_data": [{"path": "d"}]},
            "a",
        )


def test_entries_are_frozen_and_change_only_into_new_values() -> None:
    entry = ArtifactEntry("v.onnx", "a" * 64, 10, "visual", "fp32", "onnx", details={"conversion": {"mode": "x"}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        entry.path = "w.onnx"  # type: ignore[misc]
    changed = entry.with_details(source_path="v.onnx")
    assert changed.detail("source_path") == "v.onnx" and entry.detail("source_path") is None
    assert list(changed.to_json())[-2:] == ["conversion", "source_path"]  # added records go last, as written


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
    moved = entry.moved(FileRecord("v.int8.onnx", "c" * 64, 11), ())
    assert (moved.path, moved.sha256, moved.bytes) == ("v.int8.onnx", "c" * 64, 11)
    assert moved.to_json()["conversion"] == {"mode": "dynamic"} and moved.derived_from == entry.derived_from
    assert moved.files == (FileRecord("v.int8.onnx", "c" * 64, 11),)
    assert "opset" not in ArtifactEntry("e.plan", "d" * 64, 1, "text", "fp16", "tensorrt").to_json()  # engines


def test_select_and_find_match_values_and_sets_of_values() -> None:
    def entry(path: str, tower: str, precision: str, format: str) -> dict:
        return ArtifactEntry(path, "0" * 64, 1, tower, precision, format).to_json()

    manifest = Manifest.from_json(
        {
            "schema": 1,
            "artifacts": [
                entry("visual.onnx", "visual", "fp32", "onnx"),
                entry("text.onnx", "text", "fp32", "onnx"),
                entry("text.int8.onnx", "text", "int8", "onnx"),
                entry("visual.trt-fp16.plan", "visual", "fp16", "tensorrt"),
            ],
        },
        "test",
    )
    assert [a.path for a in manifest.select(tower="text")] == ["text.onnx", "text.int8.onnx"]
    assert [a.path for a in manifest.select(precision=("fp16", "int8"), format="onnx")] == ["text.int8.onnx"]
    assert [a.path for a in manifest.select(tower=["visual"], precision="fp32")] == ["visual.onnx"]
    found = manifest.find(format="tensorrt")
    assert found is not None and found.path == "visual.trt-fp16.plan" and manifest.find(precision="q4") is None
    manifest.upsert(dataclasses.replace(manifest.artifacts[0], sha256="1" * 64))
    assert [a.path for a in manifest.artifacts][-1] == "visual.onnx" and len(manifest.artifacts) == 4
    assert list(manifest.to_json()) == ["schema", "artifacts"]  # sections keep their places
    with pytest.raises(ValueError, match="artifacts change through upsert"):
        manifest.set_section("artifacts", [])


def test_an_entry_is_built_from_its_written_file_and_declared_io() -> None:
    inputs, outputs = declared_io(
        {
            "inputs": [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 224, 224]}],
            "outputs": [{"name": "image_embeds", "dtype": "float32", "shape": ["batch", 512]}],
        },
        "visual",
    )
    entry = ArtifactEntry.of_file(
        FileRecord("visual.onnx", "e" * 64, 7), tower="visual", precision="fp32", format="onnx", inputs=inputs
    )
    assert entry.files == (FileRecord("visual.onnx", "e" * 64, 7),) and entry.inputs[0].shape[1] == 3
    assert outputs == (TensorRecord("image_embeds", "float32", ("batch", 512)),)
    with pytest.raises(ManifestError, match="visual output has no dtype, shape"):
        declared_io({"inputs": [], "outputs": [{"name": "x"}]}, "visual")


def test_section_files_read_as_the_records_they_were_hashed_as(tiny_vit_dir: Path) -> None:
    from clip_export.core.artifact import SECTION_FILES

    manifest = read_manifest(tiny_vit_dir)
    reference = manifest.section_file("reference", "here")
    assert isinstance(reference, FileRecord) and reference.to_json() == {
        k: manifest.section("reference")[k] for k in ("path", "sha256", "bytes")
    }
    tokenizer_files = [k for k in SECTION_FILES if k.startswith("tokenizer.") and manifest.section_file(k, "here")]
    assert tokenizer_files  # the tiny export bundles its tokenizer file
    manifest.sections["reference"] = {"path": "reference.npz"}
    with pytest.raises(ManifestError, match="here: reference"):
        manifest.section_file("reference", "here")
    manifest.drop_section("reference")
    assert manifest.section_file("reference", "here") is None
    with pytest.raises(ValueError, match="tokenizer.file"):
        manifest.section_file("model", "here")
