"""Where batch-1 time goes in the fp32 and INT8 towers: onnxruntime's per-node profile by op type.

    python benchmarks/int8_profile.py --exports ROOT [--models ViT-B/32,ViT-L/14] [--runs 20] [--blockwise]

ROOT holds ROOT/<model-slug>/ from `clip-export onnx MODEL --random-init --out ROOT` and
`clip-export int8`, as for int8_gemm_bound.py, whose batch-1 rows this uses: the patches and the
class token for images, the bundled captions' median token count for text. Each file (fp32 and the
INT8 file of each kernel family) runs alone, one after the other, with ClipOnnx's session settings
(2 threads, parked after each run). Per tower: ms per run by op type, the sum over nodes, and
onnxruntime's own time for the whole run (model_run; the difference is its per-node dispatch).
In fp32 the weight GEMMs are MatMul (attention's probabilities x values is a MatMul too, its
scores a FusedMatMul); in INT8 they are DynamicQuantizeMatMul and the MatMuls left are attention's.
--blockwise adds a column for INT8's first fallback (spec.INT8_BLOCKWISE, MatMulNBits), quantized
from the fp32 file into a scratch folder the way `clip-export int8` writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_gemm_bound import REPO, image_rows, median_caption_tokens, print_header, tower_feed, tower_files  # noqa: E402

WARM_UP = 3


def profile(path: Path, feed: dict[str, Any], runs: int, scratch: Path) -> tuple[dict[str, float], float]:
    """(ms per run by op type, median ms of onnxruntime's model_run) over `runs` profiled runs."""
    from clip_export.core.sessions import SessionOptions, create_session

    options = SessionOptions(intra_op_threads=2, stop_spinning_after_run=True)
    session = create_session(path, dataclasses.replace(options, profile_prefix=str(scratch / path.stem)))
    for _ in range(WARM_UP + runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs_seen = [e for e in events if e.get("name") == "model_run"]
    first_timed = runs_seen[WARM_UP]["ts"]  # the warm-up runs' nodes are left out
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= first_timed:
            totals[event["args"]["op_name"]] += event["dur"] / runs / 1000.0
    return dict(totals), statistics.median(e["dur"] for e in runs_seen[WARM_UP:]) / 1000.0


def table(model: str, tower: str, rows: int, profiles: dict[str, tuple[dict[str, float], float]], top: int) -> str:
    labels = list(profiles)
    ops = sorted(
        {op for totals, _ in profiles.values() for op in totals},
        key=lambda op: -max(totals.get(op, 0.0) for totals, _ in profiles.values()),
    )
    lines = [
        f"**{model} {tower}**, batch 1, {rows} rows: ms per run",
        "",
        "| op type | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for op in ops[:top]:
        lines.append(f"| {op} | " + " | ".join(f"{profiles[label][0].get(op, 0.0):.2f}" for label in labels) + " |")
    lines.append("| all nodes | " + " | ".join(f"{sum(profiles[label][0].values()):.2f}" for label in labels) + " |")
    lines.append("| whole run (model_run) | " + " | ".join(f"{profiles[label][1]:.2f}" for label in labels) + " |")
    fp32 = profiles["fp32"][1]
    lines.append("| fp32 ÷ this | " + " | ".join(f"{fp32 / profiles[label][1]:.2f}" for label in labels) + " |")
    return "\n".join(lines) + "\n"


def blockwise_file(fp32: Path, scratch: Path) -> Path:
    """The tower in INT8's blockwise fallback, written by the stage's own call (quantize8.quantize_blockwise)."""
    import onnx

    from clip_export.core.conversion import save_model
    from clip_export.core.graph_surgery import int8_excluded_nodes
    from clip_export.stages.quantize8.int8_build import quantize_blockwise

    model = onnx.load(str(fp32))
    target = scratch / f"{fp32.stem}.blockwise.onnx"
    save_model(quantize_blockwise(model, int8_excluded_nodes(model)), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=Path, required=True, help="ROOT holding ROOT/<model-slug>/")
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--top", type=int, default=10, help="op types shown per tower")
    parser.add_argument("--blockwise", action="store_true", help="add INT8's blockwise fallback as a column")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import open_clip

    caption_rows = median_caption_tokens()
    print_header(
        "Where batch-1 time goes, fp32 against INT8: onnxruntime's node profile",
        f"2 threads, {args.runs} profiled runs per file after {WARM_UP} warm-up runs",
    )
    for model in args.models.split(","):
        model_dir = args.exports / model.replace("/", "-")
        vision = open_clip.get_model_config(model.replace("/", "-"))["vision_cfg"]
        rows_of = {"visual": image_rows(vision), "text": caption_rows}
        for tower in ("visual", "text"):
            files = tower_files(model_dir, tower)
            if files is None:
                print(f"{model} {tower}: no fp32 and two INT8 files under {model_dir}; skipped\n")
                continue
            feed = tower_feed(model_dir, tower, rows_of[tower])
            with tempfile.TemporaryDirectory(prefix="int8-profile-") as scratch:
                if args.blockwise:
                    files["blockwise"] = blockwise_file(files["fp32"], Path(scratch))
                profiles = {label: profile(path, feed, args.runs, Path(scratch)) for label, path in files.items()}
            print(table(model, tower, rows_of[tower], profiles, args.top), flush=True)


if __name__ == "__main__":
    main()
