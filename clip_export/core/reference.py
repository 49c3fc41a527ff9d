"""The torch fp32 reference: the towers as torch modules, deterministic example inputs, and the
reference embeddings of the evaluation set that every gate compares with. Shared by export (its
parity gate and reference.npz), verify (--reference torch) and bench (FLOP counting)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from clip_export.core.evalset import EvalSet
from clip_export.core.models import LoadedModel
from clip_export.core.preprocess import preprocess_batch
from clip_export.core.spec import TOWERS


def tower_module(loaded: LoadedModel, tower: str, normalize: bool) -> Any:
    """A torch module whose forward is exactly encode_image or encode_text: what gets traced."""
    import torch

    class Tower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: Any) -> Any:
            encode = self.model.encode_image if tower == "visual" else self.model.encode_text
            return encode(x, normalize=normalize)

    return Tower(loaded.model).eval()


def example_input(loaded: LoadedModel, tower: str, batch: int, seed: int = 0) -> np.ndarray:
    """Deterministic inputs; text rows get the start id (where the family has one), random ordinary
    tokens, the end id at varied positions, then the family's padding id."""
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
        length = int(rng.integers(3, ctx + 1))
        ordinary = rng.integers(low, max(high, low + 1), size=length - (sot is not None) - (eot is not None)).tolist()
        ids[row, :length] = [*([sot] if sot is not None else []), *ordinary, *([eot] if eot is not None else [])]
    return ids


def torch_embed(loaded: LoadedModel, tower: str, inputs: np.ndarray, normalize: bool, batch: int = 8) -> np.ndarray:
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
