"""INT8 schemes on each x86 tier: does the same *.int8.onnx pass the int8 gate with and without VNNI?

    python benchmarks/int8_tiers.py [--model ViT-B/32] [--no-emulate] [--emulated-items 8]

Quantizes the fp32 export (benchmarks/.work/<slug>, exported if missing) once per candidate scheme
(clip_export.core.spec.INT8_CANDIDATE_SCHEMES), then for each scheme and tower:
- runs the int8 gate (clip_export.core.checks.check_artifact, int8 thresholds) on this CPU, natively;
- runs the same bytes under `qemu-x86_64 -cpu Haswell` (Debian's qemu-user), where onnxruntime
  selects its AVX2 kernels without VNNI, on the first N reference items (emulation is slow), and
  reports mean |Δ| and min cosine against the stored fp32 reference;
- times batch 1 natively, interleaved with the fp32 ONNX artifact and torch eager fp32 (sessions
  parked after each run, an untimed pause after torch, so no call runs against another's threads).
Prints Markdown with the CPU named. Speed under emulation means nothing, so AVX2 speed is only
measured when this script runs on an AVX2 machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def fidelity(path: Path, tower: str, reference: Path, items: int) -> dict[str, float]:
    """mean |Δ| (normalised) and min cosine of one artifact on the first `items` reference inputs."""
    from clip_export.core.sessions import create_session
    from clip_export.core.spec import TOWERS

    spec = TOWERS[tower]
    with np.load(reference) as data:
        inputs, expected = data[spec.input_name][:items], data[spec.output_name][:items]
    session = create_session(path)
    got = np.concatenate([session.run(None, {spec.input_name: inputs[i : i + 1]})[0] for i in range(len(inputs))])
    got_n = got / np.linalg.norm(got, axis=1, keepdims=True)
    ref_n = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    return {
        "mean_abs_normalized": float(np.abs(got_n - ref_n).mean()),
        "min_cosine": float((got_n * ref_n).sum(1).min()),
        "items": len(inputs),
    }


def emulated(path: Path, tower: str, reference: Path, items: int) -> dict[str, float] | str:
    """The same measurement in a Haswell-emulating qemu (AVX2, FMA, no AVX-512, no VNNI)."""
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        return "qemu-x86_64 not installed (apt-get install qemu-user)"
    command = [
        qemu,
        "-cpu",
        "Haswell",
        sys.executable,
        __file__,
        "--fidelity-only",
        str(path),
        tower,
        str(reference),
        str(items),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return f"failed under qemu: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--no-emulate", action="store_true")
    parser.add_argument("--emulated-items", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument(
        "--fidelity-only", nargs=4, metavar=("PATH", "TOWER", "REFERENCE", "ITEMS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.fidelity_only:
        path, tower, reference, items = args.fidelity_only
        print(json.dumps(fidelity(Path(path), tower, Path(reference), int(items))))
        return

    import logging

    from cpu_report import exported

    from clip_export.core.checks import check_artifact
    from clip_export.core.environment import current_environment
    from clip_export.core.manifest import now_iso, read_manifest
    from clip_export.core.models import load_model, spec_from_manifest
    from clip_export.core.sessions import SessionOptions, create_session
    from clip_export.core.spec import INT8_CANDIDATE_SCHEMES, INT8_SCHEME, THRESHOLDS, TOWERS
    from clip_export.stages.bench.timing import time_interleaved
    from clip_export.stages.quantize8.quantize8 import quantize_int8

    logging.getLogger().setLevel(logging.ERROR)
    source = exported(args.model)
    env = current_environment("CPUExecutionProvider")
    print(f"Measuring on {env.describe()}.", file=sys.stderr)
    loaded = load_model(spec_from_manifest(read_manifest(source).model.to_json()))
    with np.load(source / "reference.npz") as data:
        ref = {k: data[k] for k in data.files}
    rows = []
    for scheme in INT8_CANDIDATE_SCHEMES:
        work = source.parent / f"{source.name}-int8-{scheme.weight_type}-{'rr' if scheme.reduce_range else 'full'}"
        if not (work / "manifest.json").exists():
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(
                source, work, ignore=shutil.ignore_patterns("*.int8.onnx", "*.fp16.onnx", "BENCH.md", "*.png")
            )
            manifest_path = work / "manifest.json"
            manifest = json.loads(manifest_path.read_text())
            manifest["artifacts"] = [a for a in manifest["artifacts"] if a["precision"] == "fp32"]
            manifest_path.write_text(json.dumps(manifest))
            print(f"quantizing with {scheme.label}", file=sys.stderr)
            try:
                quantize_int8(work, scheme=scheme)
            except Exception as exc:  # a scheme that fails its gate natively still gets a row
                print(f"  {exc}", file=sys.stderr)
                continue
        manifest = read_manifest(work)
        for tower in ("visual", "text"):
            entry = manifest.find(tower=tower, precision="int8")
            fp32 = manifest.find(tower=tower, precision="fp32")
            check = check_artifact(work, entry, "cpu", ref, THRESHOLDS["int8"])
            emu = (
                "not run"
                if args.no_emulate
                else emulated(work / entry.path, tower, work / "reference.npz", args.emulated_items)
            )
            name = TOWERS[tower].input_name
            one = ref[name][:1]
            # Parked after each run, as ClipOnnx serves: interleaved sessions whose workers spin on
            # after run() steal the two cores from the next call (fp32 measured 58 ms instead of 29).
            parked = SessionOptions(intra_op_threads=2, stop_spinning_after_run=True)
            int8_session = create_session(work / entry.path, parked)
            fp32_session = create_session(work / fp32.path, parked)
            import torch

            torch.set_num_threads(2)
            encode = loaded.model.encode_image if tower == "visual" else loaded.model.encode_text
            x = torch.from_numpy(one)

            def eager() -> None:
                with torch.no_grad():
                    encode(x)

            # torch's OpenMP workers spin on after eager() returns and steal the two cores from the call
            # that follows (INT8 measured 17.5 ms there, 10.4 ms alone): an untimed pause lets them sleep.
            *p50, _ = time_interleaved(
                [
                    lambda: int8_session.run(None, {name: one}),
                    lambda: fp32_session.run(None, {name: one}),
                    eager,
                    lambda: time.sleep(0.05),
                ],
                rounds=args.rounds,
                warmup=3,
            )
            int8_session = fp32_session = None  # one model in memory at a time
            rows.append((scheme, tower, check, emu, p50))
    print(
        f"\n{now_iso()}, {env.cpu} ({env.cpu_target}, {env.tier}); flags that select kernels: {', '.join(env.isa_flags) or 'none'}; onnxruntime {env.onnxruntime}; 2 threads.\n"
    )
    print(
        "| scheme | tower | native: gate | native mean abs Δ (norm.) | native min cosine | Haswell (qemu, AVX2) mean abs Δ | Haswell min cosine | Haswell vs int8 limits | INT8 p50 ms | fp32 ONNX p50 ms | torch eager p50 ms | INT8 × torch | INT8 × fp32 ONNX |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    limits = THRESHOLDS["int8"]
    for scheme, tower, check, emu, (p_int8, p_fp32, p_torch) in rows:
        if isinstance(emu, dict):
            ok = emu["mean_abs_normalized"] <= limits.mean_abs_normalized and emu["min_cosine"] >= limits.min_cosine
            emu_cells = f"{emu['mean_abs_normalized']:.1e} | {emu['min_cosine']:.4f} | {'within' if ok else 'OUTSIDE'} ({emu['items']} items)"
        else:
            emu_cells = f"- | - | {emu}"
        marker = " (default)" if scheme == INT8_SCHEME else ""
        print(
            f"| {scheme.label}{marker} | {tower} | {check.status} | {check.metric('mean_abs_normalized'):.1e} | {check.metric('min_cosine'):.4f} | {emu_cells} | {p_int8:.1f} | {p_fp32:.1f} | {p_torch:.1f} | {p_torch / p_int8:.2f} | {p_fp32 / p_int8:.2f} |"
        )


if __name__ == "__main__":
    main()
