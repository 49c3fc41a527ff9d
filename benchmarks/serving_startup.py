"""Start-up of a serving process: import the runtime, open a release, embed the first caption, then the first image.

    python benchmarks/serving_startup.py [--model ViT-B/32] [--runs 3]

Runs fresh Python processes on the ViT-B/32 export under benchmarks/.work (exported if missing),
once with the BPE vocabulary the export bundles (no torch), once with the manifest's vocabulary
entry removed, so that the runtime falls back to open_clip's tokenizer (which imports torch).
The serve-time check (ClipOnnx.from_release's `check`) runs in every row but the first, whose
"off" shows what it costs. Reports the median wall time from the first import to the first caption embedding, then the time
of the first image embedding (numba's import and compiled kernels, from its on-disk cache, or
compiled afresh with an empty cache directory), the peak RSS, and whether torch was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from clip_export import resolve
from clip_export.core.environment import current_environment
from clip_export.core.manifest import now_iso, read_manifest, write_manifest
from clip_export.core.tokenizer import TextTokenizer
from clip_export.stages.bench.preprocessing_study import report_images

WORK = Path(__file__).parent / ".work"
CHILD = """
import json, resource, sys, time
start = time.perf_counter()
from clip_export.runtime import ClipOnnx
runtime = ClipOnnx.from_release(sys.argv[1], check=sys.argv[3])
opened = time.perf_counter()
runtime.embed_texts(["a photo of a cat"])
caption_done = time.perf_counter()
runtime.embed_images([sys.argv[2]])
check_s = sum(c.seconds for c in runtime.serve_checks.values())
statuses = sorted({c.status.split(":")[0] for c in runtime.serve_checks.values()})
print(json.dumps({"seconds": caption_done - start, "open_s": opened - start, "check_s": check_s, "check": "/".join(statuses), "first_image_s": time.perf_counter() - caption_done, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "torch_imported": "torch" in sys.modules}))
"""


def without_vocabulary(model_dir: Path, into: Path) -> Path:
    """The same artifacts (hard-linked, not copied: a manifest's files may not be symlinks leaving
    its directory) with a manifest that names no vocabulary."""
    for path in model_dir.iterdir():
        if path.is_file() and path.name not in ("manifest.json", "tokenizer.json"):
            os.link(path, into / path.name)
    manifest = read_manifest(model_dir)
    manifest.section("tokenizer").pop("file", None)
    write_manifest(into, manifest)
    return into


def measure(directory: Path, runs: int, empty_numba_cache: bool = False, check: str = "always") -> dict[str, Any]:
    samples = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "NUMBA_CACHE_DIR": cache} if empty_numba_cache else None
            done = subprocess.run(
                [sys.executable, "-c", CHILD, str(directory), str(report_images()[1]), check],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
        samples.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {
        "seconds": statistics.median(s["seconds"] for s in samples),
        "open_s": statistics.median(s["open_s"] for s in samples),
        "check_s": statistics.median(s["check_s"] for s in samples),
        "check": samples[0]["check"],
        "first_image_s": statistics.median(s["first_image_s"] for s in samples),
        "peak_rss_mb": statistics.median(s["peak_rss_mb"] for s in samples),
        "torch_imported": any(s["torch_imported"] for s in samples),
    }


def per_call_us(tokenizer: Any, texts: list[str], calls: int = 1000) -> float:
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        tokenizer(texts)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def open_clip_tokenizer() -> Any:
    import open_clip

    return open_clip.get_tokenizer("ViT-B-32")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    spec = resolve(args.model, random_init=True, seed=0)
    model_dir = WORK / spec.slug
    if (
        not (model_dir / "manifest.json").exists()
        or read_manifest(model_dir).section_file("tokenizer.file", str(model_dir)) is None
    ):
        # In a child: Linux carries a parent's peak RSS over into the processes it forks.
        export = f"from clip_export import export_onnx, resolve; export_onnx(resolve({args.model!r}, random_init=True, seed=0), out={str(WORK)!r}, force=True)"
        subprocess.run([sys.executable, "-c", export], check=True)
    measure(model_dir, 1)  # fills numba's on-disk cache, as the first use after installing does
    rows = {
        "bundled tokenizer.json (clip_export.core.tokenizer), serve-time check off": measure(
            model_dir, args.runs, check="off"
        ),
        "bundled tokenizer.json (clip_export.core.tokenizer), serve-time check run": measure(model_dir, args.runs),
        "bundled tokenizer.json, empty numba cache (first use after installing)": measure(
            model_dir, args.runs, empty_numba_cache=True
        ),
    }
    with tempfile.TemporaryDirectory() as tmp:
        rows["open_clip tokenizer (older exports)"] = measure(without_vocabulary(model_dir, Path(tmp)), args.runs)
    caption = ["a photo of an astronaut riding a horse"]
    tokenize_us = {
        "clip_export.core.tokenizer": per_call_us(
            TextTokenizer.from_file(
                model_dir / read_manifest(model_dir).section_file("tokenizer.file", str(model_dir)).path,
                read_manifest(model_dir).tokenizer,
            ),
            caption,
        ),
        "open_clip": per_call_us(open_clip_tokenizer(), caption),
    }
    print(f"{now_iso()}, {args.model} fp32 CPU, median of {args.runs} fresh processes\n")
    env = current_environment("CPUExecutionProvider")
    print(f"CPU: {env.cpu} ({env.cpu_target}, {env.tier})\n")
    print(
        "| tokenizer | import → from_release returned s | of which the serve-time check s | import → first caption embedding s | then the first image (JPEG) s | peak RSS MB | torch imported |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        check = f"{row['check_s']:.3f}" if row["check"] == "pass" else row["check"]
        print(
            f"| {label} | {row['open_s']:.2f} | {check} | {row['seconds']:.2f} | {row['first_image_s']:.2f} | {row['peak_rss_mb']:.0f} | {'yes' if row['torch_imported'] else 'no'} |"
        )
    print(
        "\nTokenizing one caption, median of 1000 calls (warm cache): "
        + ", ".join(f"{k} {v:.1f} µs" for k, v in tokenize_us.items())
    )


if __name__ == "__main__":
    main()
