"""transformers.js (Node) loads a release's hf/onnx/text_model_q4.onnx, GatherBlockQuantized
included, and embeds the bundled captions like Python onnxruntime on the same ids.

    python benchmarks/q4_transformers_js.py MODEL_DIR RELEASE_OUT

MODEL_DIR has fp32 and q4 towers, verified (`clip-export q4 DIR && clip-export verify DIR`).
"""
import sys, numpy as np, onnxruntime as ort
from pathlib import Path
from clip_export.release import release
from clip_export.clients import find_transformers_js, run_transformers_js
from clip_export.evalset import load_evalset
model_dir = Path(sys.argv[1]); out = Path(sys.argv[2])
rel = release([model_dir], tag="v0", out=out, client_check="off").directory
hf = rel / "hf"
print(sorted(p.name for p in (hf / "onnx").iterdir()))
captions = list(load_evalset().captions)
setup = find_transformers_js(); print(setup.version)
for dtype, name in (("fp32", "text_model.onnx"), ("q4", "text_model_q4.onnx")):
    got = run_transformers_js(setup, hf, captions, [], dtype=dtype)
    ids = np.asarray(got["input_ids"], dtype=np.int64)
    s = ort.InferenceSession(str(hf / "onnx" / name), providers=["CPUExecutionProvider"])
    py = s.run(None, {s.get_inputs()[0].name: ids})[0]
    py = py / np.linalg.norm(py, axis=1, keepdims=True)
    print(dtype, name, "transformers.js vs python onnxruntime on the same ids: min cosine", float((got["text_embeds"] * py).sum(1).min()), "n", len(ids))
