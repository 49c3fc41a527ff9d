"""Runtime overhead for the ship issue: everything ClipOnnx.embed_* does around the session run.

    python benchmarks/runtime_overhead.py [--model ViT-B/32]

Measures, for one document at a time on the CPU, the bare `session.run` on ready inputs and the
full `embed_images` / `embed_texts` call, interleaved in one process, and prints the overhead as a
share of the session run.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image

from clip_export import export_onnx, resolve
from clip_export.bench import report_images, time_calls
from clip_export.manifest import now_iso
from clip_export.runtime import ClipOnnx

WORK = Path(__file__).parent / ".work"
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--budget", type=float, default=3.0)
    args = parser.parse_args()
    spec = resolve(args.model, random_init=True, seed=0)
    model_dir = WORK / spec.slug
    if not (model_dir / "manifest.json").exists():
        export_onnx(spec, out=WORK, force=True)
    rows = []
    for fast in (False, True):
        runtime = ClipOnnx.from_release(model_dir, fast_preprocess=fast)
        visual, text = runtime._visual, runtime._text
        for path in report_images():
            pil = Image.open(path)
            pil.load()
            pixels = runtime.pixel_values([pil])
            bare = time_calls(lambda: visual.run(None, {"pixel_values": pixels}), budget_s=args.budget)
            from_pil = time_calls(lambda: runtime.embed_images([pil]), budget_s=args.budget)
            from_file = time_calls(lambda: runtime.embed_images([path]), budget_s=args.budget)
            rows.append({"input": path.name, "preprocess": "crop-box (fast)" if fast else "reference (exact)", "session_run_ms": bare.p50_ms, "embed_pil_ms": from_pil.p50_ms, "embed_file_ms": from_file.p50_ms, "overhead_pil": from_pil.p50_ms / bare.p50_ms - 1, "overhead_file": from_file.p50_ms / bare.p50_ms - 1})
        ids = runtime.tokenize(["a photo of an astronaut riding a horse"])
        bare = time_calls(lambda: text.run(None, {"input_ids": ids}), budget_s=args.budget)
        full = time_calls(lambda: runtime.embed_texts(["a photo of an astronaut riding a horse"]), budget_s=args.budget)
        rows.append({"input": "one caption", "preprocess": "open_clip tokenizer", "session_run_ms": bare.p50_ms, "embed_pil_ms": full.p50_ms, "embed_file_ms": None, "overhead_pil": full.p50_ms / bare.p50_ms - 1, "overhead_file": None})
        runtime = None  # one set of sessions alive at a time
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"runtime_{spec.slug}.json").write_text(json.dumps({"date": now_iso(), "rows": rows}, indent=2) + "\n")
    print(f"{now_iso()}, {args.model} random weights, CPU, batch 1\n")
    print("| input | preprocessing | session.run p50 ms | embed (PIL image / caption) p50 ms | overhead | embed (file path) p50 ms | overhead |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        file_ms = "-" if r["embed_file_ms"] is None else f"{r['embed_file_ms']:.2f}"
        file_over = "-" if r["overhead_file"] is None else f"{r['overhead_file'] * 100:.1f}%"
        print(f"| {r['input']} | {r['preprocess']} | {r['session_run_ms']:.2f} | {r['embed_pil_ms']:.2f} | {r['overhead_pil'] * 100:.1f}% | {file_ms} | {file_over} |")


if __name__ == "__main__":
    main()
