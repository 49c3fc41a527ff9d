"""The export-time batch-first attention: same numbers as torch's own path, undone after export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from clip_export.core.attention import batch_first_attention


def _attention(batch_first: bool = True) -> torch.nn.MultiheadAttention:
    torch.manual_seed(0)
    return torch.nn.MultiheadAttention(32, 4, batch_first=batch_first).eval()


def _causal_float(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf")).triu(1)


@pytest.mark.parametrize(
    "mask",
    [
        None,
        _causal_float(7),
        torch.ones(7, 7, dtype=torch.bool).triu(1),
        torch.randn(2 * 4, 7, 7, generator=torch.Generator().manual_seed(1)),
    ],
    ids=["no-mask", "float-causal", "bool-causal", "per-head-3d"],
)
def test_matches_torch_self_attention(mask: torch.Tensor | None) -> None:
    mha = _attention()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
        with batch_first_attention(mha) as used:
            got = mha(x, x, x, need_weights=False, attn_mask=mask)[0]
    assert used == {id(mha)}
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-5)


def test_other_calls_keep_torch_path_and_the_patch_is_undone() -> None:
    mha, seq_first = _attention(), _attention(batch_first=False)
    x, memory = torch.randn(2, 7, 32), torch.randn(2, 5, 32)
    with torch.no_grad():
        expected = mha(x, memory, memory, need_weights=False)[0]
        with batch_first_attention(torch.nn.ModuleList([mha, seq_first])) as used:
            assert "forward" in vars(mha) and "forward" not in vars(seq_first)
            got = mha(x, memory, memory, need_weights=False)[0]  # cross-attention
            weights = mha(x, x, x, need_weights=True)[1]  # asks for the attention weights
    assert used == set()
    assert weights is not None and weights.shape == (2, 7, 7)
    torch.testing.assert_close(got, expected)
    assert "forward" not in vars(mha)


def test_export_traces_batch_first_and_records_it(tiny_vit_dir: Path) -> None:
    manifest = json.loads((tiny_vit_dir / "manifest.json").read_text())
    assert {
        a["tower"]: a["batch_first_attention_blocks"] for a in manifest["artifacts"] if a["precision"] == "fp32"
    } == {"visual": 2, "text": 2}
    for tower in ("visual", "text"):
        graph = onnx.load(str(tiny_vit_dir / f"{tower}.onnx")).graph
        perms = [list(a.ints) for n in graph.node if n.op_type == "Transpose" for a in n.attribute if a.name == "perm"]
        assert [1, 0, 2] not in perms  # no sequence-first round trip left
        assert perms.count([2, 0, 3, 1, 4]) == 2  # one head split per block


def test_export_leaves_the_model_unpatched(tmp_path: Path) -> None:
    from clip_export import resolve
    from clip_export.core.models import load_model
    from clip_export.stages.export import export_tower

    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    export_tower(loaded, "visual", tmp_path / "visual.onnx")
    attentions = [m for m in loaded.model.modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert attentions and all("forward" not in vars(m) for m in attentions)
    assert np.isfinite(loaded.model.encode_image(torch.zeros(1, 3, 64, 64)).detach().numpy()).all()


def test_export_can_keep_torchs_trace(tmp_path: Path) -> None:
    from clip_export import resolve
    from clip_export.core.models import load_model
    from clip_export.stages.export import export_tower

    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    _, rewritten, _, _ = export_tower(loaded, "text", tmp_path / "text.onnx", batch_first_attention=False)
    perms = [
        list(a.ints)
        for n in onnx.load(str(tmp_path / "text.onnx")).graph.node
        if n.op_type == "Transpose"
        for a in n.attribute
        if a.name == "perm"
    ]
    assert rewritten == 0 and [1, 0, 2] in perms and [2, 0, 3, 1, 4] not in perms
