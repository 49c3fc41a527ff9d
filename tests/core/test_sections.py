from __future__ import annotations

import json
from pathlib import Path

import pytest

from clip_export.core.configs import PreprocessConfig
from clip_export.core.errors import ManifestError
from clip_export.core.manifest import MANIFEST_NAME, read_manifest, write_manifest
from clip_export.core.sections import ModelSection, ReferenceSection, TokenizerSection


def test_every_section_reads_as_a_typed_value_of_what_the_export_wrote(tiny_vit_dir: Path) -> None:
    manifest = read_manifest(tiny_vit_dir)
    written = json.loads((tiny_vit_dir / MANIFEST_NAME).read_text())
    assert isinstance(manifest.model, ModelSection) and manifest.model.to_json() == written["model"]
    assert manifest.model.arch == "tiny-vit" and manifest.model.random_init and manifest.model.family == "clip"
    assert isinstance(manifest.tokenizer, TokenizerSection) and manifest.tokenizer.to_json() == written["tokenizer"]
    assert manifest.tokenizer.context_length == written["tokenizer"]["context_length"]
    assert manifest.preprocess == PreprocessConfig.from_json(written["preprocess"])
    assert isinstance(manifest.reference, ReferenceSection) and manifest.reference.evalset == "bundled"
    assert len(manifest.reference.captions or ()) == len(written["reference"]["captions"])


def test_sections_are_values_and_a_misshapen_one_names_itself() -> None:
    model = ModelSection.from_json({"arch": "ViT-B-32", "embed_dim": 512})
    with pytest.raises(TypeError):
        model.fields["arch"] = "other"  # type: ignore[index]
    assert model.name == "ViT-B-32" and model.embed_dim == 512 and model.family == "clip"
    with pytest.raises(ManifestError, match="the manifest's tokenizer section has no context_length"):
        TokenizerSection.from_json({"kind": "clip-bpe"})
    assert TokenizerSection.from_json({"context_length": 77, "pad_token_id": None}).pad_token_id == 0


def test_a_moved_section_file_keeps_the_rest_of_its_section(tiny_vit_copy: Path) -> None:
    from clip_export.core.artifact import FileRecord

    manifest = read_manifest(tiny_vit_copy)
    before = manifest.reference.to_json()  # type: ignore[union-attr]
    manifest.move_section_file("reference", FileRecord("model-reference.npz", "ab" * 32, 7))
    after = manifest.reference.to_json()  # type: ignore[union-attr]
    assert list(after) == list(before) and after["path"] == "model-reference.npz" and after["bytes"] == 7
    assert {k: v for k, v in after.items() if k not in ("path", "sha256", "bytes")} == {
        k: v for k, v in before.items() if k not in ("path", "sha256", "bytes")
    }
    write_manifest(tiny_vit_copy, manifest)
    assert read_manifest(tiny_vit_copy).section_file("reference", "here") == FileRecord(
        "model-reference.npz", "ab" * 32, 7
    )
    manifest.drop_section("reference")
    with pytest.raises(ValueError, match="no reference"):
        manifest.move_section_file("reference", FileRecord("x", "ab" * 32, 1))


def test_the_benchmark_section_reads_as_the_rows_the_card_shows() -> None:
    from clip_export.core.artifact import Manifest
    from clip_export.core.sections import MeasuredRow

    rows = [
        {
            "name": "visual.onnx",
            "kind": "artifact",
            "tower": "visual",
            "batch": 1,
            "provider_ran": "CPUExecutionProvider",
            "latency": {"p50_ms": 9.5},
            "speedup_vs_torch": 6.1,
        },
        {
            "name": "torch eager",
            "kind": "baseline",
            "tower": "visual",
            "batch": 1,
            "provider_ran": None,
            "latency": None,
        },
    ]
    manifest = Manifest([], {"benchmark": {"machine": {"cpu": "AMD EPYC"}, "date": "2026-12-04", "rows": rows}})
    bench = manifest.benchmark
    assert bench is not None and bench.machine_cpu == "AMD EPYC" and bench.date == "2026-12-04"
    assert bench.rows == (
        MeasuredRow("visual.onnx", "artifact", "visual", 1, "CPUExecutionProvider", 9.5, 6.1),
        MeasuredRow("torch eager", "baseline", "visual", 1, None, None, None),
    )
    assert Manifest([], {}).benchmark is None and dict(Manifest([], {}).int8_not_built) == {}
    with pytest.raises(ManifestError, match=r"rows\[0\] has no batch"):
        _ = Manifest([], {"benchmark": {"rows": [{"name": "x", "tower": "text"}]}}).benchmark.rows  # type: ignore[union-attr]


def test_the_last_verify_run_reads_as_a_value(tiny_vit_copy: Path) -> None:
    from clip_export.stages.verify import verify

    verify(tiny_vit_copy)
    run = read_manifest(tiny_vit_copy).verification
    written = json.loads((tiny_vit_copy / MANIFEST_NAME).read_text())["verification"]
    assert run is not None and run.date == written["date"] and dict(run.versions) == written["versions"]
    assert "onnxruntime" in run.versions
