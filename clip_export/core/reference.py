"""The torch fp32 reference: the towers as torch modules, deterministic example inputs, and the
reference embeddings of the evaluation set that every gate compares with. Shared by export (its
parity gate and reference.npz), verify (--reference torch) and bench (FLOP counting)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import EvalSet
from clip_export.core.families import (
    CUT_PADDING_HF_MODEL_TYPES,
    CUT_PADDING_HF_POOLERS,
    CUT_PADDING_POOL_TYPES,
    family_named,
)
from clip_export.core.models import LoadedModel
from clip_export.core.preprocess import preprocess_batch
from clip_export.core.spec import EXPORT_EXAMPLE_BATCH, TOWERS, VERIFY_BATCH


def _context_holder(model: Any) -> Any:
    """The module whose positional embedding and causal mask are sized to the context: CLIP's own,
    or its TextTransformer's (open_clip's CustomTextCLIP). None when neither is (a transformers tower)."""
    for holder in (model, getattr(model, "text", None)):
        if holder is not None and getattr(holder, "positional_embedding", None) is not None:
            return holder
    return None


def _masks_padding(model: Any, pad_id: int) -> bool:
    """A transformers text tower (open_clip's HFTextEncoder) that masks ids equal to its pad id from
    attention and pooling, with absolute positions (families.CUT_PADDING_HF_*): trailing padding
    changes nothing there."""
    from open_clip.hf_model import HFTextEncoder

    text = getattr(model, "text", None)
    return (
        isinstance(text, HFTextEncoder)
        and getattr(text.config, "pad_token_id", None) == pad_id
        and getattr(text.config, "model_type", None) in CUT_PADDING_HF_MODEL_TYPES
        and type(getattr(text, "pooler", None)).__name__ in CUT_PADDING_HF_POOLERS
    )


def _causal_pooling_at_eot(model: Any) -> Any:
    """The context holder of an open_clip text tower that is causal and pools at or before its end
    token (families.CUT_PADDING_POOL_TYPES, no appended CLS), so later positions change nothing;
    None otherwise."""
    holder = _context_holder(model)
    if holder is None or getattr(holder, "attn_mask", None) is None or getattr(holder, "cls_emb", None) is not None:
        return None
    pool_type = getattr(holder, "text_pool_type", None) or getattr(holder, "pool_type", None)
    return holder if pool_type in CUT_PADDING_POOL_TYPES else None


def trims_text_padding(loaded: LoadedModel) -> bool:
    """Whether the text tower is exported cutting trailing padding: the family's rule says its
    embedding ignores it, and the built tower agrees (causal and pooled at the EOT, or a transformers
    tower that masks the padding the tokenizer writes)."""
    family = family_named(loaded.family)
    return (
        family is not None
        and family.trims_text_padding
        and (
            _causal_pooling_at_eot(loaded.model) is not None
            or _masks_padding(loaded.model, loaded.tokenizer.pad_token_id)
        )
    )


def encode_trimmed_text(model: Any, ids: Any, pad_id: int, normalize: bool) -> Any:
    """encode_text on `ids` cut after the batch's last non-padding column. Under a causal mask with
    pooling at the EOT, or where padding is masked out, the positions after it change nothing, so
    this equals encode_text on the whole context; traced, the cut is computed from the ids inside
    the graph."""
    import torch

    holder = _causal_pooling_at_eot(model)
    if holder is None and not _masks_padding(model, pad_id):
        raise ClipExportError(
            "this text tower is neither causal with pooling at its end token nor masks its padding; "
            "trailing padding cannot be cut"
        )
    width = ids.shape[1]
    positions = torch.arange(1, width + 1, device=ids.device)
    # At least two positions: every caption has a start and an end token, and transformers' attention
    # decides on "more than one position" while tracing, which a cut of unknown length cannot answer.
    shortest = min(2, width)
    used = ((ids != pad_id).to(torch.int64) * positions).amax(dim=1).amax(dim=0).clamp(min=shortest).item()
    torch._check(used >= shortest)
    torch._check(used <= width)
    if holder is None:  # a transformers tower sizes its positions and mask from the ids it is given
        return model.encode_text(ids[:, :used], normalize=normalize)
    full = {name: getattr(holder, name) for name in ("positional_embedding", "attn_mask")}
    try:
        # An instance attribute shadows the registered parameter and buffer for this call only.
        holder.__dict__["positional_embedding"] = full["positional_embedding"][:used]
        holder.__dict__["attn_mask"] = full["attn_mask"][:used, :used]
        return model.encode_text(ids[:, :used], normalize=normalize)
    finally:
        for name in full:
            holder.__dict__.pop(name, None)


def tower_module(loaded: LoadedModel, tower: str, normalize: bool, *, trim_padding: bool = False) -> Any:
    """A torch module whose forward is exactly encode_image or encode_text: what gets traced. With
    `trim_padding` (text only, see trims_text_padding) it is encode_trimmed_text."""
    import torch

    pad_id = loaded.tokenizer.pad_token_id

    class Tower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            if tower == "visual":
                return self.model.encode_image(x, normalize=normalize)
            if trim_padding:
                return encode_trimmed_text(self.model, x, pad_id, normalize)
            return self.model.encode_text(x, normalize=normalize)

    return Tower(loaded.model).eval()


def example_input(
    loaded: LoadedModel, tower: str, batch: int, seed: int = 0, max_length: int | None = None, min_length: int = 3
) -> np.ndarray:
    """Deterministic inputs; text rows get the start id (where the family has one), random ordinary
    tokens, the end id at varied positions (`min_length` to `max_length` tokens), then the family's
    padding id."""
    rng = np.random.default_rng(seed)
    if tower == "visual":
        h, w = loaded.preprocess.image_size
        return rng.standard_normal((batch, 3, h, w)).astype(np.float32)
    settings = loaded.tokenizer
    ctx, sot, eot = settings.context_length, settings.sot_token_id, settings.eot_token_id
    specials = {i for i in (sot, eot, settings.pad_token_id) if i is not None}
    # CLIP's special ids close its vocabulary; elsewhere they are the first ids, ordinary ones follow.
    clip_like = sot is not None and eot is not None and min(sot, eot) > (settings.vocab_size or 0) // 2
    low, high = (1, min(sot, eot) - 1) if clip_like else (max(specials) + 1, settings.vocab_size or max(specials) + 2)
    ids = np.full((batch, ctx), settings.pad_token_id, dtype=np.int64)
    for row in range(batch):
        length = int(rng.integers(min(min_length, ctx), min(max_length or ctx, ctx) + 1))
        ordinary = rng.integers(low, max(high, low + 1), size=length - (sot is not None) - (eot is not None)).tolist()
        ids[row, :length] = [*([sot] if sot is not None else []), *ordinary, *([eot] if eot is not None else [])]
    return ids


def tower_parameter_bytes(loaded: LoadedModel, tower: str) -> int:
    """The tower's fp32 weights in bytes: export keeps them in a side file above a threshold."""
    total = sum(p.numel() * 4 for p in loaded.model.parameters())
    visual = (
        sum(p.numel() * 4 for p in loaded.model.visual.parameters()) if hasattr(loaded.model, "visual") else total // 2
    )
    return visual if tower == "visual" else total - visual


def widest_activation_per_row(loaded: LoadedModel, tower: str) -> int:
    """Elements of the largest tensor any module of the tower outputs, per input row, on the export's
    example batch: what one row holds at the tower's widest point (ViT-B/32's image tower: 50 tokens
    x 3072 in its MLP). `clip-export embed` sizes its inference parts by it (spec.EMBED_PART_ACTIVATIONS)."""
    import torch

    module = tower_module(loaded, tower, normalize=False)
    widest = 0

    def record(_: Any, __: Any, output: Any) -> None:
        nonlocal widest
        values = (
            output.values()
            if isinstance(output, Mapping)
            else output
            if isinstance(output, (tuple, list))
            else [output]
        )
        widest = max([widest, *(v.numel() for v in values if isinstance(v, torch.Tensor))])

    hooks = [child.register_forward_hook(record) for child in module.modules()]
    try:
        with torch.no_grad():
            module(torch.from_numpy(example_input(loaded, tower, EXPORT_EXAMPLE_BATCH, seed=1)))
    finally:
        for hook in hooks:
            hook.remove()
    return widest // EXPORT_EXAMPLE_BATCH


def torch_embed(
    loaded: LoadedModel, tower: str, inputs: np.ndarray, normalize: bool, batch: int = VERIFY_BATCH
) -> np.ndarray:
    import torch

    encode = loaded.model.encode_image if tower == "visual" else loaded.model.encode_text
    outputs = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            outputs.append(encode(torch.from_numpy(inputs[start : start + batch]), normalize=normalize).float().numpy())
    return np.concatenate(outputs)


def compute_reference(
    loaded: LoadedModel, evalset: EvalSet, towers: Sequence[str], normalize: bool
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    if "visual" in towers:
        visual = TOWERS["visual"]
        arrays[visual.input_name] = preprocess_batch(evalset.open_images(), loaded.preprocess)
        arrays[visual.output_name] = torch_embed(loaded, "visual", arrays[visual.input_name], normalize)
    if "text" in towers:
        ids = loaded.tokenize(list(evalset.captions))
        text = TOWERS["text"]
        arrays[text.input_name] = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids, dtype=np.int64)
        arrays[text.output_name] = torch_embed(loaded, "text", arrays[text.input_name], normalize)
    return arrays
