"""Stage: weight-only 4-bit MatMul weights (onnxruntime MatMulNBits), transformers.js's "q4",
gated by verify with its own thresholds like every other precision."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from .conversion import ConvertResult, Derivation, convert_each, save_model, set_precision_metadata, tool_version
from .errors import import_optional
from .graph_surgery import int8_excluded_nodes
from .progress import Progress, silent
from .spec import Q4_SCHEME, Q4Scheme, artifact_file_name


def quantize_q4(
    model_dir: Path,
    *,
    towers: Sequence[str] = ("visual", "text"),
    scheme: Q4Scheme = Q4_SCHEME,
    force: bool = False,
    progress: Progress = silent,
) -> ConvertResult:
    """4-bit blockwise MatMul weights; activations, Conv, LayerNorm and the final projection stay float."""
    nbits = import_optional("onnxruntime.quantization.matmul_nbits_quantizer", package="onnxruntime", extra="cpu", purpose="4-bit quantization")
    import onnx

    def write(source: Path, target: Path) -> dict[str, Any]:
        logging.getLogger().setLevel(logging.ERROR)  # the quantizer logs every MatMul through the root logger
        model = onnx.load(str(source))
        excluded = int8_excluded_nodes(model)
        config = nbits.DefaultWeightOnlyQuantConfig(block_size=scheme.block_size, is_symmetric=scheme.symmetric, accuracy_level=scheme.accuracy_level, op_types_to_quantize=("MatMul",))
        quantizer = nbits.MatMulNBitsQuantizer(model, nodes_to_exclude=excluded, algo_config=config)
        quantizer.process()
        quantized = quantizer.model.model
        set_precision_metadata(quantized, "q4")
        save_model(quantized, target)
        count = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
        return {"tool": f"onnxruntime.quantization.matmul_nbits_quantizer {tool_version('onnxruntime')}", "bits": 4, "block_size": scheme.block_size, "symmetric": scheme.symmetric, "accuracy_level": scheme.accuracy_level, "matmul_nbits_nodes": count, "excluded_nodes": excluded}

    return convert_each(model_dir, Derivation("q4", lambda path: artifact_file_name(path, "q4")), write, towers=towers, force=force, progress=progress)
