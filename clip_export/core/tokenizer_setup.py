"""The reference tokenizer of an open_clip architecture, found offline, and the torch-free
tokenizer.json built from it: checked id for id on the evaluation captions and the probe strings
before any export time is spent, so what the runtime bundles is what the model was tested with."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.checkpoints import sha256_file
from clip_export.core.configs import LoadedModel, ModelSpec, PreprocessConfig, TokenizerConfig
from clip_export.core.errors import ClipExportError, WeightsError
from clip_export.core.families import FamilyRules
from clip_export.core.tokenizer import (
    CLEAN_KINDS,
    PROBE_TEXTS,
    TextTokenizer,
    clip_bpe_tokenizer,
    copy_of,
    first_disagreement,
)


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def reference_tokenizer(
    oc: Any, arch: str, model_cfg: Mapping[str, Any], family: FamilyRules, tokenizer_dir: Path | None
) -> Any:
    """open_clip's tokenizer for `arch`: from --tokenizer DIR when given; from the hub's name only
    when it is cached or the hub answers (no retry loop against an unreachable hub)."""
    text_cfg = model_cfg.get("text_cfg") or {}
    hf_name = text_cfg.get("hf_tokenizer_name")
    if family.tokenizer != "hf" or not hf_name and tokenizer_dir is None:
        return oc.get_tokenizer(arch)
    context = int(text_cfg.get("context_length") or 77)
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    if tokenizer_dir is not None:
        try:
            reference = oc.tokenizer.HFTokenizer(
                str(tokenizer_dir), context_length=context, local_files_only=True, **kwargs
            )
        except Exception as exc:  # transformers raises many types for a bad directory
            raise ClipExportError(
                f"--tokenizer {tokenizer_dir} could not be loaded as a Hugging Face tokenizer: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
        return with_language(reference, arch, family)
    offline = not hub_reachable()
    try:
        reference = oc.get_tokenizer(arch, local_files_only=True) if offline else oc.get_tokenizer(arch)
    except Exception as exc:  # transformers and the hub raise many types
        where = (
            "is not in the local Hugging Face cache and the hub cannot be reached (offline?)"
            if offline
            else f"could not be loaded: {str(exc).splitlines()[0]}"
        )
        raise WeightsError(
            f"{arch} tokenizes with the Hugging Face tokenizer {hf_name!r}, which {where}; pass --tokenizer "
            "DIR, a directory holding its tokenizer.json"
        ) from exc
    return with_language(reference, arch, family)


def with_language(reference: Any, arch: str, family: FamilyRules) -> Any:
    """The family's source-language code (NLLB) set on the reference tokenizer, so the ids checked and
    the tokenizer.json bundled both start with it. Set through `src_lang`: open_clip's set_language
    calls set_src_lang_special_tokens, which transformers 5 undoes on the next call (it switches
    back to `src_lang`, eng_Latn by default)."""
    language = family.tokenizer_language
    if language is None:
        return reference
    hf = reference.tokenizer
    if not hasattr(hf, "src_lang") or hf.convert_tokens_to_ids(language) in (None, hf.unk_token_id):
        raise ClipExportError(
            f"{arch} is a {family.name} model whose captions start with the language code {language!r}, "
            f"which its tokenizer ({type(hf).__name__}) does not have"
        )
    hf.src_lang = language
    return reference


def clean_kind(oc: Any, reference: Any) -> str:
    """Which of open_clip's clean functions the reference applies, by identity."""
    function = getattr(reference, "clean_fn", None)
    for kind in CLEAN_KINDS[:3]:
        if function is oc.tokenizer.get_clean_fn(kind):
            return kind
    raise ClipExportError(
        f"open_clip's tokenizer cleans captions with {getattr(function, '__name__', function)!r}, "
        "which clip-export cannot reproduce without torch"
    )


def tokenizer_settings(oc: Any, reference: Any, family: FamilyRules, context_length: int) -> TokenizerConfig:
    """The ids and cleaning the manifest records for this reference tokenizer."""
    clean = clean_kind(oc, reference)
    if family.tokenizer != "hf" and hasattr(reference, "sot_token_id"):
        return TokenizerConfig(
            context_length,
            int(reference.sot_token_id),
            int(reference.eot_token_id),
            "clip-bpe",
            0,
            int(reference.vocab_size),
            clean,
        )
    hf = reference.tokenizer

    def optional(value: Any) -> int | None:
        return None if value is None else int(value)

    pad = hf.pad_token_id if hf.pad_token_id is not None else 0
    return TokenizerConfig(
        context_length,
        optional(hf.bos_token_id if hf.bos_token_id is not None else hf.cls_token_id),
        optional(hf.eos_token_id if hf.eos_token_id is not None else hf.sep_token_id),
        "hf",
        int(pad),
        len(hf),
        clean,
        family.tokenizer_language,
    )


def require_fits_model(
    settings: TokenizerConfig, arch: str, vocab_size: int | None, pad_token_id: int | None, where: str
) -> None:
    """A tokenizer of another model gives ids the embedding table does not have, or pads with an
    id the text tower does not mask: both refused before export."""
    if vocab_size is not None and settings.vocab_size is not None and settings.vocab_size > vocab_size:
        raise ClipExportError(
            f"{where} has {settings.vocab_size} tokens, but {arch}'s text tower embeds {vocab_size}; it "
            "is the tokenizer of another model"
        )
    if pad_token_id is not None and settings.pad_token_id != pad_token_id:
        raise ClipExportError(
            f"{where} pads with id {settings.pad_token_id}, but {arch}'s text tower masks id {pad_token_id} "
            "as padding; it is the tokenizer of another model"
        )


def build_checked(
    reference_ids: Callable[[Sequence[str], int], Any],
    backend: Any | None,
    settings: TokenizerConfig,
    arch: str,
    texts: Sequence[str],
) -> TextTokenizer:
    """The tokenizer.json (CLIP's BPE when `backend` is None, else a copy of that fast tokenizer's
    backend), refused unless it gives the reference ids on the probe strings and `texts`, at the
    model's context length and truncated at 8."""
    if backend is None:
        from open_clip.tokenizer import default_bpe

        backend = clip_bpe_tokenizer(Path(default_bpe()))
    else:
        backend = copy_of(backend)
    ours = TextTokenizer(backend, settings.clean, settings.context_length, settings.pad_token_id)

    def expected(batch: Sequence[str], length: int) -> np.ndarray:
        ids = reference_ids(batch, length)
        return np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids, dtype=np.int64)

    problem = first_disagreement(ours, expected, [*PROBE_TEXTS, *texts])
    if problem is not None:
        raise ClipExportError(
            f"the tokenizer.json built for {arch} does not reproduce its reference tokenizer's ids ({problem}); "
            "the runtime would tokenize differently, so nothing was exported"
        )
    return ours


def finish_loading(
    spec: ModelSpec,
    model: Any,
    preprocess: PreprocessConfig,
    settings: TokenizerConfig,
    tokenize: Callable[..., Any],
    backend: Any | None,
    checkpoint: Path | None,
    **fields: Any,
) -> LoadedModel:
    """The LoadedModel of either loader, with its tokenizer.json built and checked and the
    embedding width read off one caption."""
    import torch

    from clip_export.core.evalset import load_evalset

    text_tokenizer = build_checked(
        tokenize, backend, settings, spec.arch if spec.hf_dir is None else spec.name, load_evalset().captions
    )
    with torch.no_grad():
        embed_dim = int(model.encode_text(tokenize(["a"])).shape[-1])
    extra = {"text_tokenizer": text_tokenizer, **fields.pop("extra", {})}
    return LoadedModel(
        spec,
        model,
        preprocess,
        settings,
        tokenize,
        embed_dim,
        sha256_file(checkpoint) if checkpoint is not None else None,
        checkpoint,
        extra,
        **fields,
    )
