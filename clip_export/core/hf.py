"""Hugging Face CLIP directories (config.json, weights, tokenizer files), loaded offline through
transformers (`pip install 'clip-export[hf]'`) and given open_clip's encode_image/encode_text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from clip_export.core.configs import LoadedModel, ModelSpec, PreprocessConfig, TokenizerConfig
from clip_export.core.errors import WeightsError, import_optional
from clip_export.core.families import OPENAI_MEAN, OPENAI_STD
from clip_export.core.tokenizer_setup import finish_loading


def load_hf_dir(spec: ModelSpec) -> LoadedModel:
    transformers = import_optional(
        "transformers", package="transformers", extra="hf", purpose="loading a Hugging Face CLIP directory"
    )
    import torch

    assert spec.hf_dir is not None
    try:
        model = transformers.CLIPModel.from_pretrained(
            str(spec.hf_dir), local_files_only=True, torch_dtype=torch.float32
        )
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(spec.hf_dir), local_files_only=True)
    except Exception as exc:
        raise WeightsError(f"could not load the Hugging Face CLIP directory {spec.hf_dir}: {exc}") from exc
    model = _hf_adapter_class()(model).eval()
    pre = {}
    pre_file = spec.hf_dir / "preprocessor_config.json"
    if pre_file.exists():
        pre = json.loads(pre_file.read_text())
    crop = pre.get("crop_size", model.hf.config.vision_config.image_size)
    crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
    preprocess = PreprocessConfig(
        image_size=crop,
        mean=tuple(pre.get("image_mean", OPENAI_MEAN)),  # type: ignore[arg-type]
        std=tuple(pre.get("image_std", OPENAI_STD)),  # type: ignore[arg-type]
    )
    context_length = int(model.hf.config.text_config.max_position_embeddings)

    def tokenize(texts: Sequence[str], length: int = context_length) -> Any:
        return tokenizer(list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")[
            "input_ids"
        ]

    settings = TokenizerConfig(
        context_length,
        int(tokenizer.bos_token_id),
        int(tokenizer.eos_token_id),
        "huggingface",
        int(tokenizer.pad_token_id or 0),
        len(tokenizer),
        "none",
    )
    weight_files = sorted(spec.hf_dir.glob("*.safetensors")) or sorted(spec.hf_dir.glob("*.bin"))
    return finish_loading(
        spec,
        model,
        preprocess,
        settings,
        tokenize,
        tokenizer.backend_tokenizer,
        weight_files[0] if weight_files else None,
        family="huggingface-clip",
    )


@lru_cache(maxsize=1)
def _hf_adapter_class() -> type:
    """Built on first use: subclassing torch.nn.Module at import time would import torch with
    every clip_export module, including the torch-free serving runtime."""
    import torch

    class HFAdapter(torch.nn.Module):
        """Gives a transformers CLIPModel the encode_image/encode_text surface of open_clip."""

        def __init__(self, hf_model: Any) -> None:
            super().__init__()
            self.hf = hf_model

        def encode_image(self, pixel_values: Any, normalize: bool = False) -> Any:
            out = self.hf.get_image_features(pixel_values=pixel_values)
            out = getattr(out, "pooler_output", out)
            return out / out.norm(dim=-1, keepdim=True) if normalize else out

        def encode_text(self, input_ids: Any, normalize: bool = False) -> Any:
            out = self.hf.get_text_features(input_ids=input_ids)
            out = getattr(out, "pooler_output", out)
            return out / out.norm(dim=-1, keepdim=True) if normalize else out

    return HFAdapter
