"""Which weight MatMuls an INT8 tower can least afford to quantize, measured: each quantized alone
(the rest float), its error against the fp32 reference on a few inputs. `int8` keeps the worst in
float when a tower's plain scheme fails its gate (stages/quantize8/int8_fallbacks.py, docs/convert.md)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.metrics import l2_normalize
from clip_export.core.runner import open_graph
from clip_export.core.sessions import SessionOptions


def weight_matmuls(model: Any, op_types: Sequence[str], excluded: Sequence[str]) -> list[str]:
    """Nodes of `op_types` whose second input is an initializer (a weight), minus `excluded`, in graph order."""
    weights = {i.name for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type in op_types and n.name not in excluded and len(n.input) > 1 and n.input[1] in weights
    ]


def sensitivity(
    candidates: Sequence[str],
    quantize_only: Callable[[str, Path], None],
    input_name: str,
    inputs: np.ndarray,
    expected: np.ndarray,
    scratch_dir: Path,
) -> dict[str, float]:
    """Normalised mean |Δ| of the tower with only `name` quantized, for each candidate;
    `quantize_only(name, target)` writes that model."""
    want = l2_normalize(expected)
    error: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix=".int8-sensitivity-", dir=scratch_dir) as scratch:
        target = Path(scratch) / "one.onnx"
        for name in candidates:
            quantize_only(name, target)
            got = open_graph(target, SessionOptions(prepacking=False)).run(inputs)
            error[name] = float(np.abs(l2_normalize(got) - want).mean())
    return error


def most_sensitive_first(error: dict[str, float]) -> list[str]:
    return sorted(error, key=lambda name: -error[name])
