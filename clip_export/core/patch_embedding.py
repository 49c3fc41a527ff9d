"""Export-time patch embedding as a MatMul.

A ViT cuts the image into patches with a Conv2d whose kernel equals its stride. Exported as it is,
that Conv stays float in the INT8 artifact (the quantizer's op types are MatMul and Gemm; onnxruntime's
ConvInteger is slow on CPU), and on ViT-B/32 it is the largest float op left. For the export only,
such a convolution is computed as what it is, one matrix product: the non-overlapping patches
flattened with a Reshape and a Transpose, times the kernel reshaped to [in x kh x kw, out] (a
constant, so `clip-export int8` quantizes it like every other projection). Same weights, same
output layout; the export's parity gate compares the graph with the unpatched model on every export.
Measured in benchmarks/patch_embedding.py (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
from typing import Any

from clip_export.core.attention import export_rewrite


def _patchable(module: Any) -> bool:
    import torch

    return (
        type(module) is torch.nn.Conv2d  # a subclass may pad or compute otherwise (timm's Conv2dSame)
        and module.in_channels == 3  # the convolution that reads the image, not a 1x1 or downsampling layer
        and module.kernel_size == module.stride
        and module.padding == (0, 0)
        and module.dilation == (1, 1)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def _matmul_forward(conv: Any, original: Any, used: set[int]) -> Any:
    import torch

    kh, kw = conv.kernel_size
    weight = conv.weight.detach().reshape(conv.out_channels, -1).t().contiguous()  # [in*kh*kw, out]
    bias = None if conv.bias is None else conv.bias.detach().clone()

    def forward(x: Any) -> Any:
        if x.dim() != 4:  # unbatched input keeps torch's own path
            return original(x)
        used.add(id(conv))
        batch, channels, height, width = x.shape
        rows, cols = height // kh, width // kw
        if height != rows * kh or width != cols * kw:  # a stride-k Conv drops the remainder; so do we
            x = x[:, :, : rows * kh, : cols * kw]
        patches = x.reshape(batch, channels, rows, kh, cols, kw).permute(0, 2, 4, 1, 3, 5)
        out = torch.matmul(patches.reshape(batch, rows * cols, channels * kh * kw), weight)
        if bias is not None:
            out = out + bias
        return out.transpose(1, 2).reshape(batch, conv.out_channels, rows, cols)

    return forward


def matmul_patch_embedding(module: Any) -> contextlib.AbstractContextManager[set[int]]:
    """Within the block, every patch-embedding convolution of `module` (kernel == stride, no padding,
    one group) runs as a MatMul. Yields the set of convolutions that took that path, filled in as they run."""
    return export_rewrite(module, _patchable, _matmul_forward)
