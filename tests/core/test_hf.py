"""The Hugging Face directory path: a tiny random CLIPModel saved locally, no hub involved."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from clip_export import export_onnx, load_model, resolve
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import EXPORT_PARITY_TOLERANCE
from clip_export.stages.verify import verify

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import open_clip
    import torch

    directory = tmp_path_factory.mktemp("hf") / "tiny-hf-clip"
    directory.mkdir()
    bpe = open_clip.get_tokenizer("ViT-B-32")  # reuse open_clip's vocabulary: nothing is downloaded
    (directory / "vocab.json").write_text(json.dumps(bpe.encoder))
    merges = sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m, _ in merges) + "\n")
    special = {
        "bos_token": "<start_of_text>",
        "eos_token": "<end_of_text>",
        "pad_token": "<end_of_text>",
        "unk_token": "<end_of_text>",
    }
    transformers.CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), **special).save_pretrained(
        str(directory)
    )
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=16,
        ),
        projection_dim=32,
    )
    transformers.CLIPModel(config).save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "crop_size": {"height": 64, "width": 64},
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "size": {"shortest_edge": 64},
            }
        )
    )
    return directory


def test_hf_directory_loads_with_its_tokenizer(hf_dir: Path) -> None:
    loaded = load_model(resolve(str(hf_dir)))
    assert loaded.embed_dim == 32 and loaded.preprocess.image_size == (64, 64)
    assert loaded.tokenizer.kind == "huggingface" and (
        loaded.tokenizer.sot_token_id,
        loaded.tokenizer.eot_token_id,
    ) == (49406, 49407)
    ids = np.asarray(loaded.tokenize(["a photo of a cat"]))
    assert ids.shape == (1, 77) and ids[0, 0] == 49406 and ids[0, 6] == 49407


def test_hf_directory_exports_and_verifies(hf_dir: Path, tmp_path: Path) -> None:
    result = export_onnx(resolve(str(hf_dir)), out=tmp_path)
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)
    assert verify(result.model_dir).passed
    # The directory's own fast tokenizer is bundled as tokenizer.json, checked against it, cleaning left to its normalizer.
    settings = read_manifest(result.model_dir).section("tokenizer")
    assert settings["file"]["path"] == "tokenizer.json" and settings["clean"] == "none"
