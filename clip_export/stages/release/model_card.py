"""The release's MODEL_CARD.md: what the model is, every artifact with its verdicts, speed and size, and how to load it."""

from __future__ import annotations

from clip_export.core.artifact import ArtifactEntry, Manifest, VerificationRow
from clip_export.core.environment import Environment
from clip_export.core.manifest import passing_rows
from clip_export.core.spec import (
    CAPTIONS_CHECKED,
    CAPTIONS_WITH_OTHER_IDS,
    INT8_VNNI_FLAGS,
    ONNX_FORMAT,
    PREPROCESSING_FORMAT,
    TENSORRT_FORMAT,
    TOKENIZER_FORMAT,
    int8_family_of,
)
from clip_export.stages.release.clients_card import clients_section

WEIGHT_LICENCES = {
    "openai": "MIT (OpenAI CLIP weights)",
}


def passing_environments(manifest: Manifest, entry: ArtifactEntry, overridden: bool = False) -> list[Environment]:
    """The environments with a passing verify row for exactly this artifact's bytes; a passing row
    that does not say where it was obtained is refused (ManifestError), never counted."""
    return [Environment.from_json(r.environment, entry.path) for r in passing_rows(manifest, entry, overridden)]


def model_card(manifest: Manifest, slug: str, tag: str) -> str:
    model = manifest.model
    licence = (
        "none: random weights"
        if model.random_init
        else WEIGHT_LICENCES.get(model.pretrained or "", "check the licence of the weights source")
    )
    pre, tok = manifest.preprocess, manifest.tokenizer
    visual = next(
        (a for a in manifest.artifacts if a.tower == "visual" and a.format == ONNX_FORMAT and a.precision == "fp32"),
        None,
    )
    text = next(
        (a for a in manifest.artifacts if a.tower == "text" and a.format == ONNX_FORMAT and a.precision == "fp32"),
        None,
    )
    lines = [
        f"# {model.name} — clip-export release {tag}",
        "",
        f"- Architecture: open_clip `{model.arch}`; weights: {model.source}; checkpoint sha256: "
        f"`{model.checkpoint_sha256 or 'n/a'}`.",
        f"- Weights licence: {licence}.",
        f"- Embedding size: {model.embed_dim}; normalisation in graph: {manifest.normalize}.",
        f"- Preprocessing: {pre.image_size[0]}×{pre.image_size[1]}, resize {pre.resize_mode} "
        f"side with {pre.interpolation}, centre crop, mean {list(pre.mean)}, std {list(pre.std)}.",
        f"- Tokenizer: {tok.kind or 'open_clip'}, context {tok.context_length}, SOT {tok.sot_token_id}, "
        f"EOT {tok.eot_token_id}.",
        "",
        "## Artifacts",
        "",
        "| asset | tower | precision | format | input | output | bytes | sha256 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for a in manifest.artifacts:
        i, o = a.inputs[0], a.outputs[0]
        lines.append(
            f"| {a.path} | {a.tower} | {a.precision} | {a.format} | `{i.name}` {i.dtype} {list(i.shape)} "
            f"| `{o.name}` {o.dtype} {list(o.shape)} | {a.bytes} | `{a.sha256[:16]}…` |"
        )
    rows = manifest.verification_rows
    lines += [
        "",
        "## Verification",
        "",
        "A verdict holds for the bytes and the environment it names: onnxruntime picks its kernels from the CPU "
        "(AVX2, AVX-512, VNNI) and provider, so serve from an environment listed here, or let `ClipOnnx.from_release` "
        "check the artifact on the serving machine (it does by default).",
        "",
    ]
    lines += [
        "| asset | provider | mean abs diff (norm.) | min cosine | verdict | environment |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        metrics = r.metrics
        where = (
            Environment.from_json(r.environment, f"the verdict for {r.path}").describe()
            if r.environment is not None
            else "unknown"
        )
        if r.format == TOKENIZER_FORMAT:
            lines.append(
                f"| {r.path} | ids on {metrics.get(CAPTIONS_CHECKED, 0):.0f} raw captions | "
                f"{metrics.get(CAPTIONS_WITH_OTHER_IDS, float('nan')):.0f} differ | - | {r.status} | {where} |"
            )
            continue
        if r.provider_ran is None:  # the provider never ran here: no numbers, no verdict on them
            lines.append(f"| {r.path} | {r.provider_requested} | - | - | not run | {where} |")
            continue
        lines.append(
            f"| {r.path} | {r.provider_ran} | {metrics.get('mean_abs_normalized', float('nan')):.2e} "
            f"| {metrics.get('min_cosine', float('nan')):.6f} | {r.status} | {where} |"
        )
    lines += ["", "### Environments each asset passed in", ""]
    for a in manifest.artifacts:
        envs = sorted({e.describe() for e in passing_environments(manifest, a)})
        lines.append(f"- `{a.path}`: " + ("; ".join(envs) if envs else "none"))
    lines += variant_table(manifest)
    lines += int8_section(manifest)
    lines += clients_section(manifest)
    bench = manifest.benchmark
    if bench:
        lines += [
            "",
            f"## Batch-1 latency ({bench.machine_cpu or 'unknown machine'}, {bench.date})",
            "",
            "| name | tower | provider | p50 ms | × torch eager |",
            "|---|---|---|---|---|",
        ]
        for r in bench.rows:
            if r.batch == 1 and r.p50_ms is not None:
                ratio = r.speedup_vs_torch
                lines.append(
                    f"| {r.name} | {r.tower} | {r.provider_ran} | {r.p50_ms:.2f} | "
                    f"{'-' if ratio is None else f'{ratio:.2f}'} |"
                )
    if visual and text:
        lines += [
            "",
            "## Use it with plain onnxruntime",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort, open_clip",
            "from PIL import Image",
            f"visual = ort.InferenceSession('{visual.path}'); text = ort.InferenceSession('{text.path}')",
            f"size, mean, std = {pre.image_size[0]}, np.array({list(pre.mean)}, 'f4'), np.array({list(pre.std)}, 'f4')",
            "img = Image.open('photo.jpg'); s = size / min(img.size); img = img.resize((int(img.width "
            "* s), int(img.height * s)), Image.BICUBIC)",
            "l, t = round((img.width - size) / 2), round((img.height - size) / 2); img = img.crop((l, "
            "t, l + size, t + size)).convert('RGB')",
            "pixels = ((np.asarray(img, 'f4') / 255 - mean) / std).transpose(2, 0, 1)[None]",
            f"ids = open_clip.get_tokenizer('{model.arch}')(['a photo of a cat']).numpy()",
            "image_vec = visual.run(None, {'pixel_values': pixels})[0]; text_vec = text.run(None, {'input_ids': "
            "ids})[0]",
            "print((image_vec / np.linalg.norm(image_vec)) @ (text_vec / np.linalg.norm(text_vec)).T)",
            "```",
            "",
            "`clip_export.runtime.ClipOnnx.from_release(path)` does the same with hash checks and the "
            "exact resize rule (short side to "
            f"{pre.image_size[0]}, long side truncated), giving open_clip's pixels bit for bit; its "
            'default `preprocess="fast"` '
            'computes only the centre crop of Pillow\'s resize, in vectorised kernels, and `preprocess="exact"` '
            "runs PIL itself.",
        ]
    return "\n".join(lines) + "\n"


def variant_table(manifest: Manifest) -> list[str]:
    """Every variant with its size, batch-1 speed and fidelity next to the fp32 artifact of its tower,
    so a client choosing fp16, int8 or q4 for a browser or phone sees what each one costs."""
    bench = manifest.benchmark
    p50 = {
        r.name: r.p50_ms
        for r in (bench.rows if bench else ())
        if r.batch == 1 and r.p50_ms is not None and r.kind == "artifact"
    }
    verdicts: dict[str, VerificationRow] = {}
    for r in manifest.verification_rows:
        verdicts.setdefault(r.path, r)
    fp32 = {a.tower: a for a in manifest.artifacts if a.precision == "fp32" and a.format == ONNX_FORMAT}
    lines = [
        "",
        f"## Variants: size, batch-1 speed ({(bench.machine_cpu if bench else None) or 'not benchmarked'}) and fidelity",
        "",
        "Fidelity is against the fp32 torch reference on the bundled set; a preprocessing graph is "
        "fed the raw image files. "
        "Speed is the batch-1 p50 of `clip-export bench`; a preprocessing graph's is in docs/benchmarks.md.",
        "",
        "| asset | tower | precision | preprocessing in graph | MB | size vs fp32 | batch-1 p50 ms "
        "| speed vs fp32 | mean abs diff (norm.) | min cosine | top-1 agreement | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in manifest.artifacts:
        if a.format == TENSORRT_FORMAT:
            continue
        base, row = fp32.get(a.tower), verdicts.get(a.path)
        metrics = row.metrics if row else {}
        top1 = min((v for k, v in metrics.items() if k.endswith("_top1")), default=None)
        size_ratio = f"{a.bytes / base.bytes:.2f}" if base else "-"
        ms, base_ms = p50.get(a.path), p50.get(base.path) if base else None
        speed = f"{base_ms / ms:.2f}×" if ms and base_ms else "-"
        lines.append(
            f"| {a.path} | {a.tower} | {a.precision} | {'yes' if a.format == PREPROCESSING_FORMAT else 'no'} "
            f"| {a.bytes / 1e6:.1f} | {size_ratio} | "
            f"{f'{ms:.2f}' if ms else '-'} | {speed} | {_fmt(metrics.get('mean_abs_normalized'), '.2e')} "
            f"| {_fmt(metrics.get('min_cosine'), '.5f')} | {_fmt(top1, '.3f')} | {row.status if row else 'not verified'} "
            "|"
        )
    return lines


def int8_section(manifest: Manifest) -> list[str]:
    """Which INT8 file is for which CPU: one per onnxruntime kernel family, and where each was verified."""
    entries = [a for a in manifest.artifacts if a.format == ONNX_FORMAT and int8_family_of(a) is not None]
    refused = manifest.int8_not_built
    if not entries and not refused:
        return []
    lines = [
        "",
        "## INT8: which file for which CPU",
        "",
        "onnxruntime picks its INT8 kernels from the CPU. QInt8 weights run its u8×s8 kernels, fast and exact with "
        "VNNI or AMX but saturating on AVX2 without VNNI; QUInt8 weights run u8×u8 kernels that hold on every x86 tier "
        "and are slower on VNNI. `ClipOnnx.from_release(path, precision='int8')` serves the one this CPU's flags call "
        f"for ({', '.join(INT8_VNNI_FLAGS)} → QInt8, else QUInt8) and checks it before serving; transformers.js users "
        "pass `dtype: 'int8'` or `dtype: 'uint8'` the same way.",
        *(
            [
                "",
                "Weights marked blockwise are INT8's fallback for a tower whose plain file failed its gate: 8-bit "
                "weights and activations quantized per block inside onnxruntime's MatMulNBits, so an outlier channel "
                "costs only its block. It is built under the every-x86 name only and holds on every tier, so CPUs "
                "with VNNI or AMX are served it too.",
            ]
            if any((a.detail("conversion") or {}).get("mode") == "blockwise" for a in entries)
            else []
        ),
        *(
            [
                "",
                "Weights marked with outlier channels split off are INT8's fallback that keeps a family's weight type: "
                "the few activation channels measured far wider than the rest (trained transformers have them) are "
                "multiplied by their weight rows in float beside the INT8 MatMul, so the one activation scale of "
                "each INT8 MatMul covers only the ordinary channels. Every weight MatMul stays INT8.",
            ]
            if any((a.detail("conversion") or {}).get("outlier_split") for a in entries)
            else []
        ),
        "",
        "| asset | tower | weights | for CPUs | verified (passed) on |",
        "|---|---|---|---|---|",
    ]
    for a in entries:
        family = int8_family_of(a)
        tiers = sorted({e.tier_label for e in passing_environments(manifest, a)}) or ["none"]
        conversion = a.detail("conversion") or {}
        weights = conversion.get("weight_type", "?") + (
            ", outlier channels split off" if conversion.get("outlier_split") else ""
        )
        lines.append(f"| {a.path} | {a.tower} | {weights} | {family.tiers if family else '?'} | {'; '.join(tiers)} |")
    for tower, why in sorted(refused.items()):
        lines.append(f"| - | {tower} | no INT8 | - | {why} |")
    return lines


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
