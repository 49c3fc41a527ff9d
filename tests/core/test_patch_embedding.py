from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from clip_export.core.patch_embedding import matmul_patch_embedding


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("size", [(32, 32), (35, 30)])  # the second leaves a remainder the Conv drops
def test_the_matmul_is_the_convolution(bias: bool, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=bias).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = conv(x)
        with matmul_patch_embedding(conv) as used:
            got = conv(x)
    assert used == {id(conv)} and "forward" not in vars(conv)
    assert got.shape == expected.shape and torch.allclose(got, expected, atol=1e-5)


class PaddedPatches(torch.nn.Conv2d):
    """A Conv2d subclass that computes otherwise (as timm's Conv2dSame pads to keep the remainder)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.nn.functional.pad(x, (0, 8, 0, 8)))


def test_only_the_convolution_that_patches_the_image_is_rewritten() -> None:
    others = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=3, stride=2),  # overlapping: a real convolution
        torch.nn.Conv2d(8, 8, kernel_size=1),  # 1x1 inside a network, not on the image
        torch.nn.Conv2d(8, 8, kernel_size=2, stride=2),  # downsampling between stages
    )
    with matmul_patch_embedding(others) as used:
        assert all("forward" not in vars(m) for m in others)
        others(torch.randn(1, 3, 16, 16))
    assert used == set()
    padded = PaddedPatches(3, 8, kernel_size=16, stride=16)  # same kernel and stride, but its own forward
    with torch.no_grad(), matmul_patch_embedding(padded) as used:
        assert "forward" not in vars(padded) and padded(torch.randn(1, 3, 40, 40)).shape == (1, 8, 3, 3)
    assert used == set()


def test_export_writes_the_patch_embedding_as_a_matmul_that_int8_quantizes(tiny_vit_int8_dir: Path) -> None:
    from clip_export.core.manifest import read_manifest

    manifest = read_manifest(tiny_vit_int8_dir)
    fp32 = manifest.find(tower="visual", precision="fp32")
    assert fp32.detail("matmul_patch_embeddings") == 1
    assert manifest.find(tower="text", precision="fp32").detail("matmul_patch_embeddings") == 0
    graph = onnx.load(str(tiny_vit_int8_dir / fp32.path)).graph
    assert "Conv" not in {n.op_type for n in graph.node}
    patch_matmul = next(n for n in graph.node if n.op_type == "MatMul")  # the first one reads the patches
    weights = {i.name: i for i in graph.initializer}
    assert (
        patch_matmul.input[1] in weights and weights[patch_matmul.input[1]].dims[0] == 3 * 16 * 16
    )  # tiny-vit: 16-pixel patches
    int8 = onnx.load(str(tiny_vit_int8_dir / manifest.find(tower="visual", precision="int8").path)).graph
    quantized = {i.name for i in int8.initializer}
    assert f"{patch_matmul.input[1]}_quantized" in quantized
    assert not any(n.op_type == "MatMul" and patch_matmul.input[1] in n.input for n in int8.node)
