"""Does a text graph run the same in onnxruntime-node and onnxruntime-web (wasm) as in Python's
onnxruntime? For the q4 token-embedding lookup (com.microsoft.GatherBlockQuantized) above all.

    python benchmarks/q4_runtimes.py REFERENCE.npz MODEL.onnx [MODEL.onnx ...]

Feeds the reference's input_ids (every caption) to each runtime (benchmarks/q4_runtimes.cjs, the
npm packages in ./node_modules or $CLIP_EXPORT_NODE_MODULES) and prints, per runtime, the largest
difference from Python onnxruntime's output and the smallest cosine to it and to the fp32 torch
reference, and the int8 gate's mean |Δ| of normalised embeddings to that reference (INT8 files too:
the browser runs `hf/onnx/*_int8.onnx` and `*_uint8.onnx` on the wasm kernels, not the x86 ones).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from clip_export.core.metrics import numeric_metrics
from clip_export.core.sessions import create_session, ort
from clip_export.core.spec import THRESHOLDS

SCRIPT = Path(__file__).with_suffix(".cjs")


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def mean_abs_normalized(got: np.ndarray, reference: np.ndarray) -> float:
    """The int8 gate's first metric, computed by the gate's own code (core.metrics.numeric_metrics)."""
    metrics = numeric_metrics(reference, got, THRESHOLDS["int8"])
    return next(m.value for m in metrics if m.name == "mean_abs_normalized")


def main() -> None:
    ref = np.load(sys.argv[1])
    ids, torch_embeds = ref["input_ids"], ref["text_embeds"]
    with tempfile.TemporaryDirectory(prefix="q4-runtimes-") as tmp:
        (Path(tmp) / "ids.json").write_text(json.dumps({"input_ids": ids.tolist()}))
        for model in sys.argv[2:]:
            py = create_session(Path(model)).run(None, {"input_ids": ids})[0]
            subprocess.run(
                ["node", str(SCRIPT), model, str(Path(tmp) / "ids.json"), str(Path(tmp) / "out.json")], check=True
            )
            print(
                f"{Path(model).name} ({len(ids)} captions): python onnxruntime {ort().__version__}: min cosine to torch fp32 {cosine(py, torch_embeds).min():.4f}, "
                f"mean |Δ| (norm.) to it {mean_abs_normalized(py, torch_embeds):.2e}"
            )
            for name, run in json.loads((Path(tmp) / "out.json").read_text()).items():
                if "error" in run:
                    print(f"  {name} {run['version']}: FAILED: {run['error']}")
                    continue
                got = np.asarray(run["data"], dtype=np.float32).reshape(run["dims"])
                print(
                    f"  {name} {run['version']}: max |Δ| to python onnxruntime {np.abs(got - py).max():.2e}, "
                    f"min cosine to it {cosine(got, py).min():.6f}, to torch fp32 {cosine(got, torch_embeds).min():.4f}, "
                    f"mean |Δ| (norm.) to torch fp32 {mean_abs_normalized(got, torch_embeds):.2e}"
                )


if __name__ == "__main__":
    main()
