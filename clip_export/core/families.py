"""Family rules as data: what a faithful export of each open_clip family must do differently.

One declared row per family, next to the model spec (clip_export.core.models reads it): how captions
are tokenized, which preprocessing applies when no pretrained tag says otherwise, and whether
blocks are reparameterized before tracing. Where the text tower pools is open_clip's own (the
trace follows encode_text); each row's `note` says where, for docs/models.md. open_clip's own data
(an architecture's `preprocess_cfg`, a pretrained tag's config) still wins where it speaks.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from clip_export.core.errors import ClipExportError
from clip_export.core.spec import TOKENIZER_NAME as TOKENIZER_FILE

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class FamilyRules:
    """How one family exports; the first row whose selectors match an architecture applies."""

    name: str
    arch_globs: tuple[str, ...] = ()  # open_clip architecture names
    text_keys: tuple[str, ...] = ()  # text_cfg keys whose presence marks the family
    timm_prefixes: tuple[str, ...] = ()  # vision_cfg.timm_model_name prefixes
    cfg_keys: tuple[str, ...] = ()  # top-level model config keys whose presence marks the family
    tokenizer: str = "clip-bpe"  # "clip-bpe": open_clip's SimpleTokenizer; "hf": a Hugging Face tokenizer.json
    preprocess: Mapping[str, Any] = field(default_factory=dict)  # defaults below the arch's and the tag's own
    reparameterize: bool = False  # MobileOne/FastViT branches folded (timm's reparameterize_model) before export
    needs_transformers: bool = False  # the text tower is a transformers model
    tokenizer_language: str | None = (
        None  # the source-language code put before every caption (NLLB), recorded as tokenizer.language
    )
    # The text embedding ignores trailing padding (causal attention, pooled at or before the EOT), so the
    # exported text graph slices each batch to its longest caption before the transformer runs
    # (clip_export.core.reference.encode_trimmed_text): a 10-token caption pays for 10 positions, not 77.
    trims_text_padding: bool = False
    note: str = ""

    def matches(self, arch: str, model_cfg: Mapping[str, Any]) -> bool:
        text = model_cfg.get("text_cfg") or {}
        timm_name = str((model_cfg.get("vision_cfg") or {}).get("timm_model_name") or "")
        return (
            any(fnmatch.fnmatchcase(arch, g) for g in self.arch_globs)
            or any(text.get(k) for k in self.text_keys)
            or any(timm_name.startswith(p) for p in self.timm_prefixes)
            or any(model_cfg.get(k) for k in self.cfg_keys)
            or not (self.arch_globs or self.text_keys or self.timm_prefixes or self.cfg_keys)
        )


# What every transformers text tower shares: its own tokenizer, padding mask and pooler.
HF_TEXT_TOWER: Mapping[str, Any] = MappingProxyType(
    {"tokenizer": "hf", "needs_transformers": True, "trims_text_padding": True}
)

FAMILIES: tuple[FamilyRules, ...] = (
    FamilyRules(
        "mobileclip",
        arch_globs=("MobileCLIP*",),
        timm_prefixes=("fastvit", "mobileone"),
        reparameterize=True,
        trims_text_padding=True,
        note="apple/ml-mobileclip reparameterizes MobileOne/FastViT blocks before export: one conv per "
        "block instead of its train-time branches",
    ),
    FamilyRules(
        "nllb",
        arch_globs=("*nllb*",),
        **HF_TEXT_TOWER,
        tokenizer_language="eng_Latn",
        note="NLLB's tokenizer starts every caption with a source-language code; captions are taken as "
        "English (eng_Latn), the tokenizer's own default, recorded in the manifest",
    ),
    FamilyRules(
        "hf-text",
        text_keys=("hf_model_name",),
        **HF_TEXT_TOWER,
        note="multilingual text towers (XLM-RoBERTa, RoBERTa, NLLB, mT5) from transformers, with their "
        "own tokenizer, padding mask and pooler",
    ),
    FamilyRules(
        "siglip",
        arch_globs=("*SigLIP*",),
        text_keys=("hf_tokenizer_name",),
        tokenizer="hf",
        preprocess=MappingProxyType(
            {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic", "resize_mode": "squash"}
        ),
        note="SentencePiece tokenizer with its own padding, last-token pooling (no EOT argmax), squash "
        "resize with no centre crop, sigmoid head",
    ),
    FamilyRules(
        "coca",
        cfg_keys=("multimodal_cfg",),
        note="CoCa (open_clip builds CoCa when the config has a multimodal_cfg): the contrastive towers "
        "export as CLIP's, traced from encode_image/encode_text; "
        "the text embedding is the CLS token appended after the caption (last position, ids equal "
        "to the pad id 0 masked from attention), not EOT ArgMax; the generative text decoder is not "
        "exported",
    ),
    FamilyRules(
        "clip",
        trims_text_padding=True,
        note="OpenAI CLIP BPE, EOT pooling by ArgMax over the integer ids; the text graph runs only up to "
        "the batch's last EOT (trailing padding sliced off inside the graph)",
    ),
)

# transformers model_type a text tower's hf_model_name stands for: a --text-config of another type is refused.
HF_MODEL_TYPES: tuple[tuple[str, str], ...] = (
    ("xlm-roberta", "xlm-roberta"),
    ("roberta", "roberta"),
    ("nllb", "m2m_100"),
    ("mt5", "mt5"),
    ("bert", "bert"),
)

# How a text tower may pool and still ignore trailing padding, so its graph can cut it (reference.py):
# open_clip's own towers under a causal mask pool at the EOT, the EOS or the first token; transformers
# towers must also mask the padding in their pooler (open_clip's MaxPooler fills the real tokens, not
# the padding) and place tokens absolutely, learned or sinusoidal. T5's relative-position buckets are
# computed in float once the length is not fixed, and fp16 moved them (the mT5 fp16 artifact failed
# verification at 7.6e-4 mean |Δ| when cut), so T5-style towers keep the whole context.
CUT_PADDING_POOL_TYPES: tuple[str, ...] = ("argmax", "eos", "first")
CUT_PADDING_HF_POOLERS: tuple[str, ...] = ("MeanPooler", "ClsPooler", "ClsLastHiddenStatePooler")
CUT_PADDING_HF_MODEL_TYPES: tuple[str, ...] = ("bert", "roberta", "xlm-roberta", "m2m_100")


def family_for(arch: str, model_cfg: Mapping[str, Any]) -> FamilyRules:
    return next(f for f in FAMILIES if f.matches(arch, model_cfg))


def family_named(name: str) -> FamilyRules | None:
    """The rules of a family by the name a LoadedModel records; None for a model no row describes
    (a transformers CLIPModel directory, loaded by clip_export.core.hf)."""
    return next((family for family in FAMILIES if family.name == name), None)


def preprocess_settings(
    family: FamilyRules, model_cfg: Mapping[str, Any], tag_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """open_clip's defaults < the family's rule < the architecture's preprocess_cfg < the pretrained tag."""
    settings: dict[str, Any] = {
        "mean": OPENAI_MEAN,
        "std": OPENAI_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    settings.update(family.preprocess)
    for source in (model_cfg.get("preprocess_cfg") or {}, tag_cfg):
        settings.update({k: source[k] for k in settings if source.get(k) is not None})
    return settings


def expected_hf_model_type(hf_model_name: str) -> str | None:
    lowered = hf_model_name.lower()
    return next((kind for key, kind in HF_MODEL_TYPES if key in lowered), None)


def check_tokenizer_dir(directory: Path, arch: str, family: FamilyRules) -> Path:
    """--tokenizer DIR: only for families that tokenize with a Hugging Face tokenizer, and only a
    directory that holds a tokenizer.json."""
    if family.tokenizer != "hf":
        raise ClipExportError(
            f"--tokenizer {directory}: {arch} is a {family.name} model that tokenizes with open_clip's "
            "bundled CLIP BPE; --tokenizer is for models that name a Hugging Face tokenizer (SigLIP, "
            "multilingual text towers)"
        )
    if not directory.is_dir():
        raise ClipExportError(f"--tokenizer {directory}: no such directory; pass a directory holding {TOKENIZER_FILE}")
    if not (directory / TOKENIZER_FILE).is_file():
        found = ", ".join(sorted(p.name for p in directory.iterdir())[:8]) or "nothing"
        raise ClipExportError(
            f"--tokenizer {directory} has no {TOKENIZER_FILE} (it holds: {found}); save one with tokenizer.save_pretrained(DIR) "
            "or tokenizers' Tokenizer.save"
        )
    return directory.resolve()


def check_text_config_dir(directory: Path, arch: str, model_cfg: Mapping[str, Any], family: FamilyRules) -> Path:
    """--text-config DIR: a local transformers config.json of the model type the architecture's
    text tower is, read as JSON (no transformers needed to refuse it)."""
    hf_name = str((model_cfg.get("text_cfg") or {}).get("hf_model_name") or "")
    if not hf_name:
        raise ClipExportError(
            f"--text-config {directory}: {arch} is a {family.name} model whose text tower is open_clip's "
            "own; --text-config is for Hugging Face text towers (xlm-roberta, roberta, nllb, mt5 architectures)"
        )
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ClipExportError(
            f"--text-config {directory} has no config.json; save one with transformers' AutoConfig.save_pretrained(DIR)"
        )
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise ClipExportError(f"--text-config {config_file} is not a JSON object: {exc}") from exc
    expected = expected_hf_model_type(hf_name)
    if expected is not None and model_type != expected:
        raise ClipExportError(
            f"--text-config {directory} is a {model_type!r} config, but {arch}'s text tower is {hf_name} ({expected!r})"
        )
    return directory.resolve()
