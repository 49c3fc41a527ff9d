"""What the CPU allows: the GEMM ceiling through onnxruntime, a tower's FLOPs, and the streamed-weights
limit at batch 1, so bench can say how far each row is from the machine's physical limit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clip_export.core.artifact import Manifest
from clip_export.core.runner import open_graph
from clip_export.core.sessions import SessionOptions
from clip_export.core.spec import TOWERS
from clip_export.stages.bench.timing import time_calls


def _matmul_model(m: int, k: int, n: int, int8: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = numpy_helper.from_array(rng.integers(-127, 127, (k, n), dtype=np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
    else:
        weight = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("a", a_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _cpu_session(model: bytes, threads: int) -> Any:
    return open_graph(model, SessionOptions(intra_op_threads=threads)).session


def _p50_gflops(session: Any, a: np.ndarray, flops: float, budget_s: float) -> float:
    """G(FL)OP/s of a one-input limit model ("a"), from its p50 latency."""
    stats = time_calls(lambda: session.run(None, {"a": a}), warmup=2, budget_s=budget_s, min_runs=5)
    return flops / (stats.p50_ms / 1000.0) / 1e9


def gemm_ceiling(
    threads: int, int8: bool = False, size: tuple[int, int, int] = (512, 2048, 2048), budget_s: float = 1.5
) -> float:
    """GFLOP/s (GOP/s for int8) of one large MatMul through onnxruntime's CPU provider."""
    m, k, n = size
    a = (
        np.random.default_rng(1).integers(0, 255, (m, k), dtype=np.uint8)
        if int8
        else np.random.default_rng(1).standard_normal((m, k)).astype(np.float32)
    )
    return _p50_gflops(_cpu_session(_matmul_model(m, k, n, int8), threads), a, 2.0 * m * k * n, budget_s)


def count_tower(
    loaded: Any, tower: str, inputs: np.ndarray | None = None, *, trim_padding: bool = False
) -> tuple[float, tuple[tuple[int, int, int], ...]]:
    """FLOPs of one item through the tower (torch's FlopCounterMode), and the (M, K, N) of every
    matrix product against a weight, in forward order. Of `inputs` when given (per item of the
    batch), else of one example; `trim_padding` counts the text graph that cuts trailing padding."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    aten = torch.ops.aten

    class WeightProducts(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.shapes: list[tuple[int, int, int]] = []

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            if func in (aten.mm.default, aten.addmm.default):
                a, b = args[-2], args[-1]
                self.shapes.append((int(a.shape[0]), int(a.shape[1]), int(b.shape[1])))
            return func(*args, **(kwargs or {}))

    from clip_export.core.reference import example_input, tower_module

    x = torch.from_numpy(example_input(loaded, tower, 1) if inputs is None else inputs)
    encode = tower_module(loaded, tower, False, trim_padding=trim_padding)
    # The fused multi-head-attention fast path is one opaque kernel the counter does not see;
    # the slow path runs the same projections as countable matmuls.
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, WeightProducts() as products:
            encode(x)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return float(counter.get_total_flops()) / len(x), tuple(products.shapes)


def cut_text_flops(
    loaded: Any, manifest: Manifest, inputs_by_batch: Mapping[int, np.ndarray]
) -> dict[int, tuple[float, tuple[tuple[int, int, int], ...]]]:
    """Per batch size, the FLOPs per item and the weight products of a text graph that cuts
    trailing padding, on the captions that batch runs: what its artifact rows computed, not torch's
    whole context. Empty when the text graph does not cut."""
    text = TOWERS["text"].name
    if not any(e.detail("trims_trailing_padding") for e in manifest.select(tower=text, precision="fp32")):
        return {}
    return {batch: count_tower(loaded, text, inputs, trim_padding=True) for batch, inputs in inputs_by_batch.items()}


def _streamed_chain_model(
    shapes: Sequence[tuple[int, int, int]], min_weight_bytes: int, max_nodes: int, int8: bool = False
) -> tuple[bytes, int, int, float]:
    """The tower's weight products as one chain, each with its own random weight, repeated until
    the weights outgrow any cache. Slice/Pad adapt one product's width to the next one's depth.
    `int8`: 1-byte weights through MatMulInteger (uint8 activations × int8 weights, what a
    dynamically quantized MatMul runs), each int32 product cast back to uint8 for the next."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, weights = [], []
    flops, weight_bytes = 0.0, 0
    first_m, first_k = shapes[0][0], shapes[0][1]
    per_token = [shape for shape in shapes if shape[0] == first_m]  # not the pooled one-row head
    current, width = "a", first_k
    index = 0
    while index == 0 or (weight_bytes < min_weight_bytes and index < max_nodes):
        m, k, n = per_token[index % len(per_token)]
        if width > k:
            nodes.append(helper.make_node("Slice", [current, "zero", f"k{index}", "last"], [f"in{index}"]))
            weights.append(numpy_helper.from_array(np.asarray([k], np.int64), f"k{index}"))
            current = f"in{index}"
        elif width < k:
            nodes.append(helper.make_node("Pad", [current, f"pad{index}"], [f"in{index}"]))
            weights.append(numpy_helper.from_array(np.asarray([0, 0, 0, k - width], np.int64), f"pad{index}"))
            current = f"in{index}"
        if int8:
            weights.append(numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), f"w{index}"))
            nodes.append(helper.make_node("MatMulInteger", [current, f"w{index}"], [f"p{index}"]))
            nodes.append(helper.make_node("Cast", [f"p{index}"], [f"y{index}"], to=TensorProto.UINT8))
        else:
            weights.append(
                numpy_helper.from_array((rng.standard_normal((k, n), dtype=np.float32) * k**-0.5), f"w{index}")
            )
            nodes.append(helper.make_node("MatMul", [current, f"w{index}"], [f"y{index}"]))
        current, width = f"y{index}", n
        flops += 2.0 * m * k * n
        weight_bytes += (1 if int8 else 4) * k * n
        index += 1
    weights += [
        numpy_helper.from_array(np.asarray([0], np.int64), "zero"),
        numpy_helper.from_array(np.asarray([1], np.int64), "last"),
    ]
    element = TensorProto.UINT8 if int8 else TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "streamed",
        [helper.make_tensor_value_info("a", element, [first_m, first_k])],
        [helper.make_tensor_value_info(current, element, None)],
        weights,
    )
    return (
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
        first_m,
        first_k,
        flops,
    )


def streamed_gemm_ceiling(
    shapes: Sequence[tuple[int, int, int]],
    threads: int,
    *,
    min_weight_bytes: int = 256 * 2**20,
    max_nodes: int = 400,
    budget_s: float = 1.0,
    int8: bool = False,
) -> float | None:
    """GFLOP/s (GOP/s with `int8`) of the tower's own weight products at batch 1 through onnxruntime,
    each weight read from memory as a one-document run must: the limit when weights, not arithmetic,
    are the cost. `int8` streams 1-byte weights, the limit of an INT8 artifact's batch-1 rows."""
    if not shapes:
        return None
    model, m, k, flops = _streamed_chain_model(shapes, min_weight_bytes, max_nodes, int8)
    session = _cpu_session(model, threads)
    del model  # 256 MB of serialized weights the session has already copied
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (m, k), dtype=np.uint8) if int8 else rng.standard_normal((m, k)).astype(np.float32)
    return _p50_gflops(session, a, flops, budget_s)
