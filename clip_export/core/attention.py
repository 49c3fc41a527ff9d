"""Export-time attention for open_clip's `nn.MultiheadAttention` blocks.

Traced as it is, `nn.MultiheadAttention` turns each block into 38 ONNX nodes: a
sequence-first transpose in and out, per-head Reshape/Transpose/Gather splits, a dynamically shaped
key transpose and two scale Muls. onnxruntime runs them one by one: in the ViT-B/32 INT8 image
tower at batch 1, Transpose and Reshape alone took 12% of node time. For the export only, each
self-attention block is computed batch-first with the same weights, in 19 nodes: one packed QKV
projection, one 5-D head split, scaled scores, Softmax, and one merge (docs/benchmarks.md,
"Export graph"). The export's parity gate then compares the ONNX graph with
the unpatched model, so the rewrite is checked on every export.

`graph_surgery.fuse_attention` recognises exactly the graph this module produces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def _patchable(module: Any) -> bool:
    import torch

    return (
        isinstance(module, torch.nn.MultiheadAttention)
        and module.batch_first
        and module._qkv_same_embed_dim
        and module.bias_k is None
        and not module.add_zero_attn
    )


def _batch_first_forward(mha: Any, original: Any, used: set[int]) -> Any:
    import torch
    import torch.nn.functional as F

    scale = mha.head_dim**-0.5

    def forward(
        query: Any,
        key: Any,
        value: Any,
        key_padding_mask: Any = None,
        need_weights: bool = True,
        attn_mask: Any = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Any, None]:
        if (
            key is not query
            or value is not query
            or key_padding_mask is not None
            or need_weights
            or is_causal
            or (mha.training and mha.dropout > 0)
            or query.dim() != 3
        ):  # anything but open_clip's eval-time self-attention keeps torch's own path
            return original(
                query,
                key,
                value,
                key_padding_mask=key_padding_mask,
                need_weights=need_weights,
                attn_mask=attn_mask,
                average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )
        used.add(id(mha))
        batch, length, width = query.shape
        packed = F.linear(query, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = packed.view(batch, length, 3, mha.num_heads, mha.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scores = torch.matmul(q * scale, k.transpose(-2, -1))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:  # True means "may not attend" in nn.MultiheadAttention
                attn_mask = torch.zeros(attn_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill(
                    attn_mask, float("-inf")
                )
            if attn_mask.dim() == 3:  # [batch * heads, L, S]
                attn_mask = attn_mask.view(batch, mha.num_heads, length, length)
            scores = scores + attn_mask
        context = torch.matmul(scores.softmax(dim=-1), v)
        return mha.out_proj(context.transpose(1, 2).reshape(batch, length, width)), None

    return forward


@contextlib.contextmanager
def export_rewrite(
    module: Any, patchable: Callable[[Any], bool], forward: Callable[[Any, Any, set[int]], Any]
) -> Iterator[set[int]]:
    """Within the block, every submodule of `module` that is `patchable` runs `forward(submodule,
    its own forward, used)` instead; yields `used`, the ids of those that took the new path, filled
    in as they run. Only the trace sees the rewrite: the model is unpatched when the block ends."""
    patched = []
    used: set[int] = set()
    try:
        for sub in module.modules():
            if patchable(sub) and "forward" not in vars(sub):
                sub.forward = forward(sub, sub.forward, used)
                patched.append(sub)
        yield used
    finally:
        for sub in patched:
            del sub.forward


def batch_first_attention(module: Any) -> contextlib.AbstractContextManager[set[int]]:
    """Within the block, every patchable attention of `module` runs batch-first. Yields the set of
    blocks that actually took that path, filled in as they run."""
    return export_rewrite(module, _patchable, _batch_first_forward)
