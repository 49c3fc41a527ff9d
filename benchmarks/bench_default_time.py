"""How long the default `clip-export bench` takes on ViT-B/32 (fp32, fp16 and INT8 artifacts), and
how many of its rows it measured within its time budget.

    python benchmarks/bench_default_time.py [--model ViT-B/32]

Prepares benchmarks/.work/<slug> (export, INT8, fp16, each only if missing), then runs
`clip-export bench DIR` exactly as a user would, with its defaults, and prints one Markdown row:
wall time, rows measured and skipped, whether bf16 autocast ran natively, and the CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cpu_report import prepare  # noqa: E402

from clip_export.core.environment import current_environment  # noqa: E402
from clip_export.core.manifest import now_iso, read_manifest  # noqa: E402
from clip_export.stages.convert import convert_fp16  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    args = parser.parse_args()
    model_dir = prepare(args.model)
    if read_manifest(model_dir).find(precision="fp16") is None:
        convert_fp16(model_dir)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "clip_export.cli", "bench", str(model_dir), "--json", "-q"],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"bench failed after {seconds:.0f} s: {done.stderr.strip()}")
    (result,) = json.loads(done.stdout)
    rows = result["rows"]
    measured = sum(1 for r in rows if r["latency"])
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    budget = [r for r in skipped if "total time budget" in r["status"]]
    bf16 = "skipped (no native bf16)" if any("no native bf16" in r["status"] for r in skipped) else "ran"
    env = current_environment("CPUExecutionProvider")
    print(
        "| date | CPU | model | wall time (s) | rows measured | skipped: no native bf16 | skipped: time budget | preprocessing study |"
    )
    print("|---|---|---|---|---|---|---|---|")
    study = "done" if result["breakdown"] and result["preprocessing"] else "skipped (budget)"
    print(
        f"| {now_iso()} | {env.cpu} ({env.cpu_target}, {env.tier}) | {args.model} | {seconds:.0f} | {measured} of {len(rows)} | {len(skipped) - len(budget)} ({bf16}) | {len(budget)} | {study} |"
    )


if __name__ == "__main__":
    main()
