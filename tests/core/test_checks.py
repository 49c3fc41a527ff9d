from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from clip_export.core.checks import check_artifact, check_tokenizer, gate, load_reference
from clip_export.core.environment import current_environment
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import PREPROCESSING_FORMAT, THRESHOLDS, TOKENIZER_CHECK, TOKENIZER_FORMAT, TOWERS

from ..helpers import rewrite_initializer, swap_tokenizer_ids


def test_the_gate_passes_a_good_artifact_and_says_where(tiny_vit_copy: Path) -> None:
    entry = read_manifest(tiny_vit_copy).find(tower="text", precision="fp32")
    check = gate(tiny_vit_copy, entry)
    assert check.passed and check.threshold_set == "fp32" and check.provider_ran == "CPUExecutionProvider"
    assert check.environment == current_environment("CPUExecutionProvider")
    assert check.metric("mean_abs_normalized") <= THRESHOLDS["fp32"].mean_abs_normalized
    assert {"text2text_top1", "text2image_top1", "image2text_top1", "batch7_vs_single_max_abs"} <= {
        m.name for m in check.metrics
    }


def test_every_failing_metric_is_listed_together(tiny_vit_copy: Path) -> None:
    rewrite_initializer(tiny_vit_copy, "visual.onnx", lambda w: w * 3.0 + 0.05)
    manifest = read_manifest(tiny_vit_copy)
    ref, source, _ = load_reference(tiny_vit_copy, manifest, "stored", None)
    check = check_artifact(tiny_vit_copy, manifest.find(path="visual.onnx"), "cpu", ref, THRESHOLDS["fp32"])
    assert check.status == "fail" and source == "bundled"
    failed = {f.split(" = ")[0] for f in check.failures}
    assert {"mean_abs_normalized", "max_abs_normalized", "min_cosine"} <= failed and len(failed) >= 4


def test_a_preprocessing_graph_needs_the_raw_images(tiny_vit_copy: Path) -> None:
    manifest = read_manifest(tiny_vit_copy)
    ref, _, _ = load_reference(tiny_vit_copy, manifest, "stored", None)
    entry = dataclasses.replace(manifest.find(path="visual.onnx"), format=PREPROCESSING_FORMAT)
    check = check_artifact(tiny_vit_copy, entry, "cpu", ref, THRESHOLDS["fp32"], images=None)
    assert check.status == "fail" and check.provider_ran is None
    assert check.failures == (
        "a preprocessing graph is checked on the reference's raw images: the reference's images are unknown; verify with --images DIR",
    )
    assert np.isfinite(ref["image_embeds"]).all()


def _tokenizer_check(model_dir: Path):  # type: ignore[no-untyped-def]
    manifest = read_manifest(model_dir)
    ref, _, _ = load_reference(model_dir, manifest, "stored", None)
    return check_tokenizer(
        model_dir, manifest, manifest.section("reference")["captions"], ref[TOWERS["text"].input_name]
    )


def test_the_bundled_tokenizer_gives_the_reference_ids_on_the_raw_captions(tiny_vit_copy: Path) -> None:
    check = _tokenizer_check(tiny_vit_copy)
    assert (
        check is not None
        and check.passed
        and check.format == TOKENIZER_FORMAT
        and check.threshold_set == TOKENIZER_CHECK
    )
    assert check.metric("captions_with_other_ids") == 0 and check.metric("captions_checked") == len(
        read_manifest(tiny_vit_copy).section("reference")["captions"]
    )


def test_a_tokenizer_that_gives_other_ids_fails_and_names_the_first_caption(tiny_vit_copy: Path) -> None:
    swap_tokenizer_ids(tiny_vit_copy)
    check = _tokenizer_check(tiny_vit_copy)
    assert check is not None and check.status == "fail"
    assert check.metric("captions_with_other_ids") > 0
    assert "captions_with_other_ids" in check.failures[0] and "first: caption" in check.failures[0]


def test_a_changed_tokenizer_file_fails_integrity_before_any_ids(tiny_vit_copy: Path) -> None:
    swap_tokenizer_ids(tiny_vit_copy, rehash=False)
    check = _tokenizer_check(tiny_vit_copy)
    assert check is not None and check.status == "fail" and check.failures[0].startswith("integrity: tokenizer.json")


def test_unknown_captions_fail_the_tokenizer_row_instead_of_passing(tiny_vit_copy: Path) -> None:
    manifest = read_manifest(tiny_vit_copy)
    check = check_tokenizer(tiny_vit_copy, manifest, None, np.zeros((3, 77), dtype=np.int64))
    assert check is not None and check.status == "fail" and "captions are unknown" in check.failures[0]
