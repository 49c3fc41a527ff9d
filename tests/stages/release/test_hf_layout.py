"""hf/: the Hugging Face layout release writes (no Node needed; tests/test_clients.py runs transformers.js)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from clip_export.core.artifact import ArtifactEntry, Manifest
from clip_export.core.checkpoints import sha256_file
from clip_export.core.evalset import load_evalset
from clip_export.core.manifest import read_manifest
from clip_export.core.tokenizer import PROBE_TEXTS
from clip_export.runtime import ClipOnnx
from clip_export.stages.release.hf_layout import HF_DIR, ONNX_DIR, onnx_file_name, preprocessor_config
from clip_export.stages.release.release import release
from clip_export.stages.verify import verify


@pytest.fixture
def released(tiny_vit_copy: Path, tmp_path: Path) -> Path:
    assert verify(tiny_vit_copy).passed
    return release([tiny_vit_copy], tag="v1", out=tmp_path / "dist", client_check="off").directory


def test_release_writes_the_hugging_face_layout(released: Path) -> None:
    hf = released / HF_DIR
    assert {p.relative_to(hf).as_posix() for p in hf.rglob("*") if p.is_file()} == {
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "onnx/vision_model.onnx",
        "onnx/text_model.onnx",
    }
    manifest = read_manifest(released)
    assert manifest.section("hf_layout")["onnx"] == {
        "text_model.onnx": "tiny-vit-text-fp32.onnx",
        "vision_model.onnx": "tiny-vit-visual-fp32.onnx",
    }
    for record in manifest.section("hf_layout")["files"]:
        assert sha256_file(released / record["path"]) == record["sha256"], record["path"]
    assert (hf / ONNX_DIR / "vision_model.onnx").stat().st_ino == (
        released / "tiny-vit-visual-fp32.onnx"
    ).stat().st_ino  # a link, not a copy
    pre = json.loads((hf / "preprocessor_config.json").read_text())
    assert pre["do_center_crop"] is True and pre["do_normalize"] is True and pre["resample"] == 3
    assert pre["size"] == {"shortest_edge": 64} and pre["crop_size"] == {"height": 64, "width": 64}
    assert (
        pre["image_mean"] == manifest.section("preprocess")["mean"]
        and pre["image_std"] == manifest.section("preprocess")["std"]
    )
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "clip" and config["projection_dim"] == 32 and "transformers.js_config" not in config


def test_tokenizer_config_names_the_pad_token_without_adding_it(released: Path) -> None:
    """transformers.js needs model_max_length and a pad token; listed as an added token, "!" would
    tokenize as the pad id 0 instead of 256 (shared/reference/field-notes.md)."""
    from tokenizers import Tokenizer

    hf = released / HF_DIR
    config = json.loads((hf / "tokenizer_config.json").read_text())
    assert config["model_max_length"] == 77 and config["pad_token"] == "!" and config["eos_token"] == "<end_of_text>"
    tokenizer = Tokenizer.from_file(str(hf / "tokenizer.json"))
    assert {t["content"] for t in json.loads(tokenizer.to_str())["added_tokens"]} == {
        "<start_of_text>",
        "<end_of_text>",
    }
    assert set(config["added_tokens_decoder"]) == {"49406", "49407"}
    assert tokenizer.encode("wow! a cat.").ids[:4] == [49406, 2781, 256, 320]


def test_the_tokenizer_file_alone_gives_the_runtime_ids_except_where_ftfy_cleans(released: Path) -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(released / HF_DIR / "tokenizer.json"))
    runtime = ClipOnnx.from_release(released)
    texts = [*load_evalset().captions, *PROBE_TEXTS]
    differ = [t for t, ids in zip(texts, runtime.tokenize(texts)) if tokenizer.encode(t).ids != list(ids)]
    assert differ == [PROBE_TEXTS[2], PROBE_TEXTS[3]]  # HTML entities and mojibake (docs/models.md)


def test_text_graph_pads_truncates_and_restores_the_end_of_text_id(released: Path) -> None:
    runtime = ClipOnnx.from_release(released)
    captions = ["a photo of a cat", "word " * 100]
    ids = runtime.tokenize(captions)
    verified = ort.InferenceSession(str(released / "tiny-vit-text-fp32.onnx")).run(None, {"input_ids": ids})[0]
    clients = ort.InferenceSession(str(released / HF_DIR / ONNX_DIR / "text_model.onnx"))
    assert [d for d in clients.get_inputs()[0].shape] == ["batch", "sequence"]
    np.testing.assert_array_equal(clients.run(None, {"input_ids": ids})[0], verified)
    cut = ids.copy()
    cut[1, -1] = ids[1, -2]  # what transformers.js's truncation leaves: a word where EOT was
    np.testing.assert_array_equal(clients.run(None, {"input_ids": cut})[0], verified)
    short = ids[:1, :8]  # not padded
    np.testing.assert_array_equal(clients.run(None, {"input_ids": short})[0], verified[:1])
    long = np.concatenate(
        [ids[1:, :-1], np.full((1, 30), ids[1, 5]), ids[1:, -1:]], axis=1
    )  # untruncated, EOT at the end
    np.testing.assert_array_equal(clients.run(None, {"input_ids": long})[0], verified[1:])


def test_a_hugging_face_tokenizers_end_token_is_put_back_where_the_ids_were_cut(
    xlmr_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """XLM-R's tokenizer keeps </s> last when it truncates; transformers.js's ids end in a word there
    (measured on the trained MiniLM tower's [SEP]: cosine 0.991). The client graph puts </s> back, so
    a cut caption embeds as the verified graph does; the release asks the export's own tokenizer."""
    from clip_export import export_onnx, resolve
    from clip_export.stages.release.hf_layout import end_token_kept_last

    tokenizer, config = xlmr_dirs
    model_dir = export_onnx(
        resolve("tiny-xlm-roberta-ViT", random_init=True, tokenizer=tokenizer, text_config=config), out=tmp_path
    ).model_dir
    assert verify(model_dir).passed
    released = release([model_dir], tag="v1", out=tmp_path / "dist", client_check="off").directory
    manifest = read_manifest(released)
    assert end_token_kept_last(manifest, released) == manifest.tokenizer.eot_token_id == 2  # </s>
    runtime = ClipOnnx.from_release(released)
    ids = runtime.tokenize(["word " * 100, "a photo of a cat"])
    assert ids[0, -1] == 2 and ids[1, -1] == manifest.tokenizer.pad_token_id
    verified = ort.InferenceSession(str(released / "tiny-xlm-roberta-ViT-text-fp32.onnx")).run(
        None, {"input_ids": ids}
    )[0]
    clients = ort.InferenceSession(str(released / HF_DIR / ONNX_DIR / "text_model.onnx"))
    cut = ids.copy()
    cut[0, -1] = ids[0, -2]  # what transformers.js's truncation leaves: a word where </s> was
    np.testing.assert_array_equal(clients.run(None, {"input_ids": cut})[0], verified)
    np.testing.assert_array_equal(clients.run(None, {"input_ids": ids})[0], verified)


def test_squash_families_state_no_centre_crop() -> None:
    sections = {
        "model": {"arch": "ViT-B-16-SigLIP", "family": "siglip"},
        "preprocess": {
            "image_size": [256, 256],
            "resize_mode": "squash",
            "interpolation": "bicubic",
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
        },
    }
    config = preprocessor_config(Manifest([], sections))
    assert (
        config["do_center_crop"] is False
        and config["size"] == {"height": 256, "width": 256}
        and config["image_processor_type"] == "SiglipImageProcessor"
    )


def test_file_names_follow_transformers_js_dtype_suffixes() -> None:
    names = [
        onnx_file_name(ArtifactEntry("x", "0" * 64, 1, tower, precision, fmt, details={"conversion": conversion}))
        for tower, precision, fmt, conversion in (
            ("visual", "fp16", "onnx", None),
            ("text", "int8", "onnx", {"weight_type": "QUInt8"}),
            ("text", "int8", "onnx", {"weight_type": "QInt8"}),
            ("visual", "q4", "onnx", None),
            ("visual", "q4", "onnx-preprocessing", None),
            ("visual", "fp16", "tensorrt", None),
        )
    ]
    assert names == [
        "vision_model_fp16.onnx",
        "text_model_uint8.onnx",
        "text_model_int8.onnx",
        "vision_model_q4.onnx",
        "vision_model_preprocessing_q4.onnx",
        None,
    ]


def test_a_release_ships_both_int8_families_under_transformers_js_names(tiny_vit_copy: Path, tmp_path: Path) -> None:
    """QInt8 (for VNNI/AMX) as *_int8.onnx and QUInt8 (every x86 tier) as *_uint8.onnx, each a
    release asset of its own; the card says which is for which CPU; the runtime picks per flags."""
    from clip_export.core.environment import current_environment
    from clip_export.core.spec import INT8_FAMILIES
    from clip_export.stages.quantize8.quantize8 import quantize_int8

    if not INT8_FAMILIES["vnni"].applies_to(current_environment("CPUExecutionProvider").isa_flags):
        pytest.skip("this CPU has no VNNI, so int8 does not build (or claim) the QInt8 artifact here")
    quantize_int8(tiny_vit_copy)
    assert verify(tiny_vit_copy).passed
    released = release([tiny_vit_copy], tag="v1", out=tmp_path / "dist", client_check="off").directory
    onnx_names = read_manifest(released).section("hf_layout")["onnx"]
    for tower, base in (("visual", "vision_model"), ("text", "text_model")):
        assert onnx_names[f"{base}_int8.onnx"] == f"tiny-vit-{tower}-int8.onnx"
        assert onnx_names[f"{base}_uint8.onnx"] == f"tiny-vit-{tower}-uint8.onnx"
    card = (released / "MODEL_CARD.md").read_text()
    assert "## INT8: which file for which CPU" in card
    assert "| tiny-vit-text-int8.onnx | text | QInt8 | x86 with VNNI or AMX" in card
    assert "| tiny-vit-text-uint8.onnx | text | QUInt8 | every x86 tier, AVX2 without VNNI included |" in card
    assert "Weights marked blockwise" not in card  # only where a blockwise file ships
    assert "outlier channels split off" not in card  # nor an outlier-split one
    for flags, tag in ((("avx2", "fma", "avx512_vnni"), "int8"), (("avx2", "fma"), "uint8")):
        model = ClipOnnx.from_release(released, precision="int8", cpu_flags=flags)
        assert model.artifacts["text"].path.name == f"tiny-vit-text-{tag}.onnx"
