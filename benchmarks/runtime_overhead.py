"""Runtime overhead for the ship issue: everything ClipOnnx.embed_* does around the session run.

    python benchmarks/runtime_overhead.py [--model ViT-B/32]

Measures, for one document at a time on the CPU, the bare `session.run` on ready inputs and the
full `embed_images` / `embed_texts` call, call by call in alternation (so that drift on a shared VM
hits both alike), and prints the overhead as a share of the session run, for the runtime's default
("fast") preprocessing and for the bit-exact one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cpu_report import exported  # this directory is on sys.path when a script here runs
from PIL import Image

from clip_export.core.manifest import now_iso
from clip_export.runtime import ClipOnnx
from clip_export.stages.bench.preprocessing_study import report_images
from clip_export.stages.bench.timing import time_interleaved

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--budget", type=float, default=6.0, help="seconds of interleaved calls per input")
    args = parser.parse_args()
    model_dir = exported(args.model)
    rows = []
    for preprocess in ("exact", "fast"):
        runtime = ClipOnnx.from_release(model_dir, preprocess=preprocess)
        visual, text = runtime._visual, runtime._text
        for path in report_images():
            pil = Image.open(path)
            pil.load()
            pixels = runtime.pixel_values([pil])
            bare, prep, from_pil, from_file = time_interleaved(
                [
                    lambda: visual.run(None, {"pixel_values": pixels}),
                    lambda: runtime.pixel_values([pil]),
                    lambda: runtime.embed_images([pil]),
                    lambda: runtime.embed_images([path]),
                ],
                rounds=20,
                warmup=3,
                budget_s=args.budget,
            )
            rows.append(
                {
                    "input": path.name,
                    "preprocess": preprocess,
                    "session_run_ms": bare,
                    "pixel_values_ms": prep,
                    "embed_pil_ms": from_pil,
                    "embed_file_ms": from_file,
                    "overhead_pil": from_pil / bare - 1,
                    "overhead_file": from_file / bare - 1,
                }
            )
        caption = ["a photo of an astronaut riding a horse"]
        ids = runtime.tokenize(caption)
        bare, full = time_interleaved(
            [lambda: text.run(None, {"input_ids": ids}), lambda: runtime.embed_texts(caption)],
            rounds=20,
            warmup=3,
            budget_s=args.budget,
        )
        tokenizer = (
            "bundled tokenizer.json (no torch)"
            if runtime.manifest.section_file("tokenizer.file", "the release")
            else "open_clip tokenizer"
        )
        rows.append(
            {
                "input": "one caption",
                "preprocess": tokenizer,
                "session_run_ms": bare,
                "pixel_values_ms": None,
                "embed_pil_ms": full,
                "embed_file_ms": None,
                "overhead_pil": full / bare - 1,
                "overhead_file": None,
            }
        )
        runtime = None  # one set of sessions alive at a time
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"runtime_{model_dir.name}.json").write_text(
        json.dumps({"date": now_iso(), "rows": rows}, indent=2) + "\n"
    )
    print(f"{now_iso()}, {args.model} random weights, CPU, batch 1\n")
    print(
        "| input | preprocessing | session.run p50 ms | preprocessing alone p50 ms | embed (PIL image / caption) p50 ms | overhead | embed (file path) p50 ms | overhead |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        prep_ms = "-" if r["pixel_values_ms"] is None else f"{r['pixel_values_ms']:.2f}"
        file_ms = "-" if r["embed_file_ms"] is None else f"{r['embed_file_ms']:.2f}"
        file_over = "-" if r["overhead_file"] is None else f"{r['overhead_file'] * 100:.1f}%"
        print(
            f"| {r['input']} | {r['preprocess']} | {r['session_run_ms']:.2f} | {prep_ms} | {r['embed_pil_ms']:.2f} | {r['overhead_pil'] * 100:.1f}% | {file_ms} | {file_over} |"
        )


if __name__ == "__main__":
    main()
