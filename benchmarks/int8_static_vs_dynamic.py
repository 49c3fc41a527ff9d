"""Static (calibrated) vs dynamic INT8, both towers, batch 1: does dropping the per-GEMM
DynamicQuantizeLinear buy the speed #20 asks for (>= 3x the fp32 artifact), and at what fidelity?

    python benchmarks/int8_static_vs_dynamic.py [--model ViT-B/32] [--rounds 60]

Uses benchmarks/.work/<slug> (exported and INT8-converted if missing, as cpu_report.py does). Calibrates
on the first half of the stored reference inputs (MinMax, then Percentile 99.99) and scores every
candidate on all of them, so the static rows are, if anything, flattered. The final projection stays
float in every candidate, as `clip-export int8` keeps it. Times the candidates interleaved with the
fp32 export and the shipped dynamic QInt8 artifact (sessions parked after each run, 2 threads) and
prints Markdown with the CPU named.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def calibration_reader(name: str, inputs: np.ndarray):  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{name: inputs[i : i + 1]} for i in range(len(inputs))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Reader()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="ViT-B/32")
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()

    import onnx
    from cpu_report import exported
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from clip_export.core.environment import current_environment
    from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions
    from clip_export.core.manifest import intact_reference, now_iso, read_manifest
    from clip_export.core.metrics import l2_normalize
    from clip_export.core.sessions import SessionOptions, create_session
    from clip_export.core.spec import THRESHOLDS, TOWERS
    from clip_export.stages.bench.timing import time_interleaved

    logging.getLogger().setLevel(logging.ERROR)
    work = exported(args.model)
    manifest = read_manifest(work)
    if manifest.find(tower="visual", precision="int8", path="visual.int8.onnx") is None:
        from clip_export.stages.quantize8.quantize8 import quantize_int8

        quantize_int8(work)
        manifest = read_manifest(work)
    env = current_environment("CPUExecutionProvider")
    limits = THRESHOLDS["int8"]
    parked = SessionOptions(intra_op_threads=2, stop_spinning_after_run=True)
    rows: list[tuple[str, str, float, float, float, float]] = []
    _, reference_path = intact_reference(work, manifest, "the calibration set", f"{work} has no reference")
    with np.load(reference_path) as data:
        reference = {k: data[k] for k in data.files}
    for tower in ("visual", "text"):
        spec = TOWERS[tower]
        inputs, expected = reference[spec.input_name], l2_normalize(reference[spec.output_name])
        fp32 = work / manifest.find(tower=tower, precision="fp32").path
        candidates = {"fp32 ONNX": fp32, "dynamic QInt8 (shipped)": work / f"{tower}.int8.onnx"}
        prepared = work / f".{tower}.pre.onnx"
        quant_pre_process(str(fp32), str(prepared))
        excluded = quantizer_exclusions(onnx.load(str(prepared)), int8_excluded_nodes(onnx.load(str(prepared))))
        for method in (CalibrationMethod.MinMax, CalibrationMethod.Percentile):
            for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
                target = work / f".{tower}.static-{method.name}-{fmt.name}.onnx"
                print(f"calibrating {tower} {method.name} {fmt.name}", file=sys.stderr)
                quantize_static(
                    str(prepared),
                    str(target),
                    calibration_reader(spec.input_name, inputs[: len(inputs) // 2]),
                    quant_format=fmt,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                    op_types_to_quantize=["MatMul", "Gemm"],
                    nodes_to_exclude=excluded,
                    calibrate_method=method,
                    extra_options={"MatMulConstBOnly": True, "CalibPercentile": 99.99},
                )
                candidates[f"static {method.name}, {fmt.name}"] = target
        sessions = {label: create_session(path, parked) for label, path in candidates.items()}
        one = {spec.input_name: inputs[:1]}
        p50 = time_interleaved([lambda s=s: s.run(None, one) for s in sessions.values()], rounds=args.rounds, warmup=5)
        for (label, session), ms in zip(sessions.items(), p50):
            got = l2_normalize(
                np.concatenate([session.run(None, {spec.input_name: inputs[i : i + 1]})[0] for i in range(len(inputs))])
            )
            rows.append(
                (
                    tower,
                    label,
                    ms,
                    p50[0] / ms,
                    float(np.abs(got - expected).mean()),
                    float((got * expected).sum(1).min()),
                )
            )
        sessions.clear()
        for leftover in work.glob(f".{tower}.*"):
            leftover.unlink()
    print(
        f"\n{now_iso()}, {args.model} (random weights), {env.cpu} ({env.cpu_target}, {env.tier}); flags that select "
        f"kernels: {', '.join(env.isa_flags) or 'none'}; onnxruntime {env.onnxruntime}; 2 threads, batch 1, "
        f"interleaved {args.rounds} rounds. int8 gate: mean |Δ| ≤ {limits.mean_abs_normalized:g}, min cosine ≥ "
        f"{limits.min_cosine:g}.\n"
    )
    print("| tower | artifact | p50 ms | × fp32 ONNX | mean \\|Δ\\| norm. | min cosine | within int8 limits |")
    print("|---|---|---|---|---|---|---|")
    for tower, label, ms, ratio, delta, cosine in rows:
        ok = (
            "-"
            if label == "fp32 ONNX"
            else ("yes" if delta <= limits.mean_abs_normalized and cosine >= limits.min_cosine else "NO")
        )
        print(f"| {tower} | {label} | {ms:.2f} | {ratio:.2f} | {delta:.1e} | {cosine:.5f} | {ok} |")


if __name__ == "__main__":
    main()
