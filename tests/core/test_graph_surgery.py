from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from clip_export.core.sessions import create_session
from clip_export.core.spec import TOWERS


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_attention_fusion_is_exact_in_fp32(tiny_vit_dir: Path, tower: str) -> None:
    """Each block's attention becomes one MultiHeadAttention with the same outputs (text keeps its causal mask)."""
    import onnxruntime

    from clip_export import load_model, resolve
    from clip_export.core.graph_surgery import fuse_attention
    from clip_export.core.reference import example_input

    model = onnx.load(str(tiny_vit_dir / f"{tower}.onnx"))
    assert fuse_attention(model) == 2
    heads = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    assert all(
        onnx.helper.get_attribute_value(next(a for a in n.attribute if a.name == "num_heads")) == 2 for n in heads
    )
    assert (len(heads[0].input) == 6) == (tower == "text")
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    name = TOWERS[tower].input_name
    inputs = example_input(loaded, tower, 3, seed=2)
    fused = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {name: inputs}
    )[0]
    plain = create_session(tiny_vit_dir / f"{tower}.onnx").run(None, {name: inputs})[0]
    np.testing.assert_allclose(fused, plain, atol=1e-5)


def test_attention_fusion_leaves_resnet_pooling_alone(tmp_path: Path) -> None:
    from clip_export import export_onnx, resolve
    from clip_export.core.graph_surgery import fuse_attention

    model_dir = export_onnx(resolve("tiny-rn", random_init=True), out=tmp_path, towers=["visual"]).model_dir
    model = onnx.load(str(model_dir / "visual.onnx"))
    before = len(model.graph.node)
    fused = fuse_attention(model)
    assert fused == 0 and len(model.graph.node) == before
