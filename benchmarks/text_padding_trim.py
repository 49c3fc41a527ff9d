"""What cutting trailing padding inside the text graph (clip_export.core.reference.encode_trimmed_text)
buys one caption at a time and a batch of captions.

    python benchmarks/text_padding_trim.py [--models ViT-B/32,ViT-L/14] [--rounds 15]

For each model (random weights, seed 0) exports the text tower twice in this run, over the whole
77-token context (the export before this change) and cutting trailing padding (the default for the
clip and mobileclip families), quantizes both with the INT8 family this CPU serves (`clip-export
int8`'s call, final nodes float), and times the four files interleaved with open_clip's torch eager
encode_text (2 threads, sessions parked after each run, a pause after each torch call): at batch 1
each timed call embeds the next of the bundled captions, at batch 8 the first eight together. Also
each file's mean |Δ| to the fp32 whole-context graph over every bundled caption, one at a time. Prints
Markdown with the CPU named.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from patch_embedding import quantized  # noqa: E402  (this directory is on sys.path)


def cycling(run: Callable[[np.ndarray], Any], batches: list[np.ndarray]) -> Callable[[], Any]:
    """A call that runs the next batch each time, so every caption length is timed."""
    upcoming = itertools.cycle(batches)
    return lambda: run(next(upcoming))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="ViT-B/32,ViT-L/14")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)
    import torch

    from clip_export import resolve
    from clip_export.core.environment import current_environment
    from clip_export.core.evalset import load_evalset
    from clip_export.core.manifest import now_iso
    from clip_export.core.metrics import l2_normalize
    from clip_export.core.models import load_model
    from clip_export.core.sessions import SessionOptions, create_session
    from clip_export.core.spec import TOWERS, int8_family_for_cpu
    from clip_export.stages.bench.timing import time_interleaved
    from clip_export.stages.export import export_tower

    env = current_environment("CPUExecutionProvider")
    family = int8_family_for_cpu(env.isa_flags)
    torch.set_num_threads(2)
    parked = SessionOptions(intra_op_threads=2, stop_spinning_after_run=True)
    input_name = TOWERS["text"].input_name
    captions = list(load_evalset().captions)
    rows = []
    for model in args.models.split(","):
        loaded = load_model(resolve(model, random_init=True, seed=0))
        ids = np.asarray(loaded.tokenize(captions), dtype=np.int64)
        lengths = (ids != loaded.tokenizer.pad_token_id).sum(axis=1)
        single = [ids[i : i + 1] for i in range(len(ids))]
        eight = [ids[:8]]

        def torch_call(batch: np.ndarray) -> None:
            with torch.no_grad():
                loaded.model.encode_text(torch.from_numpy(batch))

        with tempfile.TemporaryDirectory(prefix="text-trim-") as tmp:
            files = {}
            for label, trim in (("whole context", False), ("padding cut (the default)", True)):
                path = Path(tmp) / f"text-{int(trim)}.onnx"
                print(f"exporting {model}'s text tower, {label}", file=sys.stderr)
                export_tower(loaded, "text", path, trim_padding=trim)
                files[f"fp32, {label}"] = path
                files[f"INT8 {family.file_tag} ({family.name} family), {label}"] = quantized(
                    path, path.with_suffix(".int8.onnx"), family.name
                )
            sessions = {k: create_session(p, parked) for k, p in files.items()}
            # One caption at a time, so each short caption is cut where the graph cuts it.
            whole = {k: np.concatenate([s.run(None, {input_name: b})[0] for b in single]) for k, s in sessions.items()}
            reference = l2_normalize(whole["fp32, whole context"])
            delta = {label: float(np.abs(l2_normalize(got) - reference).mean()) for label, got in whole.items()}
            for batch_label, batches in (("1 (each caption in turn)", single), ("8", eight)):
                calls = [cycling(lambda b, s=s: s.run(None, {input_name: b}), batches) for s in sessions.values()]
                # torch's workers spin after a call: a pause (its own, ignored timing) lets them park.
                calls += [cycling(torch_call, batches), lambda: time.sleep(0.05)]
                p50 = time_interleaved(calls, rounds=args.rounds * len(batches), warmup=3)
                torch_ms, fp32_whole = p50[-2], p50[0]
                for label, ms in zip(files, p50):
                    rows.append((model, batch_label, label, ms, fp32_whole / ms, torch_ms / ms, delta[label]))
                rows.append(
                    (model, batch_label, "torch eager fp32 (open_clip)", torch_ms, fp32_whole / torch_ms, 1.0, None)
                )
            sessions.clear()
        print(
            f"{model}: bundled captions {len(captions)}, tokens incl. start/end: median "
            f"{int(np.median(lengths))}, max {int(lengths.max())} of {ids.shape[1]}",
            file=sys.stderr,
        )
    print(
        f"\n{now_iso()}, {env.cpu} ({env.cpu_target}, {env.tier}); flags that select kernels: "
        f"{', '.join(env.isa_flags) or 'none'}; onnxruntime {env.onnxruntime}; 2 threads, "
        f"{args.rounds} interleaved rounds, random weights (seed 0), the {len(captions)} bundled captions.\n"
    )
    print(
        "| model | batch | text tower | p50 ms | × fp32 whole context | × torch eager "
        f"| mean \\|Δ\\| to fp32 whole context (norm., {len(captions)} captions one at a time) |"
    )
    print("|---|---|---|---|---|---|---|")
    for model, batch, label, ms, ratio, vs_torch, delta in rows:
        shown = "–" if delta is None else f"{delta:.1e}"
        print(f"| {model} | {batch} | {label} | {ms:.2f} | {ratio:.2f} | {vs_torch:.2f} | {shown} |")


if __name__ == "__main__":
    main()
