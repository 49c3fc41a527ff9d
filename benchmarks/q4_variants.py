"""4-bit variants of each fp32 tower against the fp32 artifact: file size, batch-1 speed side by
side, and every gate metric (verify's, against the stored fp32 torch reference).

    python benchmarks/q4_variants.py DIR [DIR ...] [--block-sizes 32] [--rounds 30]

DIR is an export (`clip-export onnx MODEL --random-init --out ...`). For each tower and block size
it writes `q4` into scratch files next to the fp32 graph, removed afterwards (the manifest is not
touched); the text tower once per token-embedding choice: 8-bit and 4-bit GatherBlockQuantized, and
float (MatMulNBits only, the scheme before 2026-11-30). Each tower's files run interleaved at batch 1
on 2 threads, so their ratios share the machine's drift.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import check_artifact, load_reference
from clip_export.core.manifest import file_record, read_manifest
from clip_export.core.sessions import SessionOptions, create_session
from clip_export.core.spec import Q4_EMBEDDING_BITS, Q4_SCHEME, THRESHOLDS, TOWERS
from clip_export.stages.bench.timing import time_interleaved
from clip_export.stages.quantize4 import quantize_file

GATE = ("mean_abs_normalized", "max_abs_normalized", "min_cosine")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dirs", type=Path, nargs="+")
    parser.add_argument("--block-sizes", default=str(Q4_SCHEME.block_size))
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    limits = THRESHOLDS["q4"]
    print(f"q4 limits today: {limits}")
    print(
        "| model | tower | artifact | MB | size ÷ fp32 | batch-1 p50 ms | fp32 ÷ this | mean abs (norm.) | max abs (norm.) | min cosine | min top-1 | min top-5 | opset | gate |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model_dir in args.dirs:
        manifest = read_manifest(model_dir)
        ref, _, _ = load_reference(model_dir, manifest, "stored", None)
        for source in manifest.select(precision="fp32", format="onnx"):
            tower = source.tower
            rows: list[tuple[str, ArtifactEntry, object, int | None]] = [
                ("fp32", source, check_artifact(model_dir, source, "cpu", ref, THRESHOLDS["fp32"]), source.opset)
            ]
            scratch = []
            for block in (int(b) for b in args.block_sizes.split(",")):
                for bits in Q4_EMBEDDING_BITS if tower == "text" else (None,):
                    scheme = dataclasses.replace(Q4_SCHEME, block_size=block, embedding_bits=bits)
                    label = f"q4 b{block}" + (
                        f", {bits}-bit embedding" if bits else (", float embedding" if tower == "text" else "")
                    )
                    target = model_dir / f".q4bench-{tower}-b{block}-{bits}.onnx"
                    scratch.append(target)
                    details = quantize_file(model_dir / source.path, target, scheme)
                    entry = dataclasses.replace(source.moved(file_record(target, model_dir), ()), precision="q4")
                    rows.append((label, entry, check_artifact(model_dir, entry, "cpu", ref, limits), details["opset"]))
            try:
                name = TOWERS[tower].input_name
                x = ref[name][:1]
                sessions = [
                    create_session(model_dir / e.path, SessionOptions(intra_op_threads=2, stop_spinning_after_run=True))
                    for _, e, _, _ in rows
                ]
                times = time_interleaved(
                    [lambda s=s: s.run(None, {name: x}) for s in sessions], rounds=args.rounds, warmup=3
                )
                del sessions
                for (label, entry, check, opset), ms in zip(rows, times):
                    top1 = min(m.value for m in check.metrics if m.name.endswith("_top1"))
                    top5 = min(m.value for m in check.metrics if m.name.endswith("_top5_overlap"))
                    gate = [check.metric(m) for m in GATE]
                    print(
                        f"| {manifest.model.name} | {tower} | {label} | {entry.bytes / 1e6:.1f} | {entry.bytes / source.bytes:.2f} | {ms:.2f} | {times[0] / ms:.2f} | "
                        f"{gate[0]:.2e} | {gate[1]:.3f} | {gate[2]:.4f} | {top1:.3f} | {top5:.3f} | {opset} | {check.status}{'' if check.passed else ': ' + '; '.join(check.failures)} |"
                    )
            finally:
                for target in scratch:
                    target.unlink(missing_ok=True)


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
