"""Family × stage coverage: export parity, fp16, INT8, verify and the torch-free runtime, measured.

    python benchmarks/model_coverage.py            # tiny configs of every family + MobileCLIP2-S0
    python benchmarks/model_coverage.py --full     # also base-size open_clip architectures (1-8 min each, ViT-H-14 the longest)
    python benchmarks/model_coverage.py tiny-SigLIP ViT-B-32

Everything runs offline with seeded random weights, one model at a time. Families whose
tokenizer or text config lives on the Hugging Face hub get local stand-ins built here (a Unigram
tokenizer trained on the bundled captions, a transformers config of the real shape), which test the
export path, not the real tokenizer's vocabulary. Prints Markdown for docs/models.md.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (family, model, what it needs offline); tiny rows are tests/configs, the rest open_clip's own.
DEFAULT = [
    ("clip", "tiny-vit", ""),
    ("siglip", "tiny-SigLIP", "siglip-tokenizer"),
    ("hf-text", "tiny-xlm-roberta-ViT", "xlmr-tiny"),
    ("mobileclip", "tiny-MobileCLIP", ""),
    ("mobileclip", "MobileCLIP2-S0", ""),
]
FULL = DEFAULT + [
    ("clip", "ViT-B-32", ""),
    ("clip", "RN50", ""),
    ("siglip", "ViT-B-16-SigLIP", "siglip-tokenizer"),
    ("hf-text", "xlm-roberta-base-ViT-B-32", "xlmr-base"),
    ("mobileclip", "MobileCLIP-S1", ""),
    ("clip", "EVA02-B-16", ""),
    ("clip", "convnext_base", ""),
    ("clip", "ViT-S-32", ""),
    ("coca", "coca_ViT-B-32", ""),
    ("clip", "ViTamin-S", ""),
    ("clip", "PE-Core-S-16-384", ""),
    ("clip", "vit_medium_patch16_gap_256", ""),
    ("clip", "swin_base_patch4_window7_224", ""),
    ("siglip", "ViT-B-16-SigLIP2", "siglip2-tokenizer"),
    ("hf-text", "roberta-ViT-B-32", "roberta-base"),
    ("nllb", "nllb-clip-base", "nllb-200-distilled-600M"),
    ("hf-text", "mt5-base-ViT-B-32", "mt5-base"),
    ("clip", "ViT-H-14-quickgelu", ""),
]


@dataclass
class Row:
    family: str
    model: str
    export: str = "not run"
    fp16: str = "not run"
    int8: str = "not run"
    verify: str = "not run"
    runtime: str = "not run"
    seconds: float = 0.0


def stand_ins(need: str, scratch: Path) -> dict[str, Path]:
    from tests.helpers import train_byte_level_bpe_tokenizer, train_nllb_tokenizer, train_unigram_tokenizer

    if need == "siglip-tokenizer":
        return {
            "tokenizer": train_unigram_tokenizer(
                scratch / "tok",
                ["<pad>", "</s>", "<unk>"],
                "$A </s>",
                {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"},
            )
        }
    if (
        need == "siglip2-tokenizer"
    ):  # Gemma's layout: <pad> 0, <eos> 1, <bos> 2, <unk> 3; no BOS, EOS appended (open_clip's SigLipTokenizer 'gemma')
        specials = {"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>", "unk_token": "<unk>"}
        return {
            "tokenizer": train_unigram_tokenizer(
                scratch / "tok", ["<pad>", "<eos>", "<bos>", "<unk>"], "$A <eos>", specials
            )
        }
    if (
        need == "roberta-base"
    ):  # roberta-base's shape (50265 tokens, 514 positions, 1 token type), ids <s> 0, <pad> 1, </s> 2
        from transformers import RobertaConfig

        specials = {
            "bos_token": "<s>",
            "pad_token": "<pad>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "cls_token": "<s>",
            "sep_token": "</s>",
            "mask_token": "<mask>",
        }
        tokenizer = train_byte_level_bpe_tokenizer(
            scratch / "tok", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], specials
        )
        RobertaConfig(
            vocab_size=50265,
            max_position_embeddings=514,
            type_vocab_size=1,
            layer_norm_eps=1e-5,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
        ).save_pretrained(scratch / "cfg")
        return {"tokenizer": tokenizer, "text_config": scratch / "cfg"}
    if (
        need == "nllb-200-distilled-600M"
    ):  # its m2m_100 shape; NLLB's layout <s> 0, <pad> 1, </s> 2, <unk> 3, language codes after
        from transformers import M2M100Config

        shape = dict(
            d_model=1024,
            encoder_layers=12,
            decoder_layers=12,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
        )
        M2M100Config(
            vocab_size=256206,
            max_position_embeddings=1024,
            scale_embedding=True,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            **shape,
        ).save_pretrained(scratch / "cfg")
        return {"tokenizer": train_nllb_tokenizer(scratch / "tok"), "text_config": scratch / "cfg"}
    if need == "mt5-base":  # its mt5 shape; mT5's layout <pad> 0, </s> 1, <unk> 2, no BOS, </s> appended
        from transformers import MT5Config

        MT5Config(
            vocab_size=250112,
            d_model=768,
            d_kv=64,
            d_ff=2048,
            num_layers=12,
            num_decoder_layers=12,
            num_heads=12,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        ).save_pretrained(scratch / "cfg")
        specials = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
        return {
            "tokenizer": train_unigram_tokenizer(scratch / "tok", ["<pad>", "</s>", "<unk>"], "$A </s>", specials),
            "text_config": scratch / "cfg",
        }
    if need.startswith("xlmr"):
        from transformers import XLMRobertaConfig

        specials = {
            "bos_token": "<s>",
            "pad_token": "<pad>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "cls_token": "<s>",
            "sep_token": "</s>",
        }
        tokenizer = train_unigram_tokenizer(scratch / "tok", ["<s>", "<pad>", "</s>", "<unk>"], "<s> $A </s>", specials)
        tiny = dict(
            vocab_size=128,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=80,
        )
        XLMRobertaConfig(
            **(tiny if need == "xlmr-tiny" else {}), pad_token_id=1, bos_token_id=0, eos_token_id=2
        ).save_pretrained(scratch / "cfg")
        return {"tokenizer": tokenizer, "text_config": scratch / "cfg"}
    return {}


def _cell(check: Any) -> str:
    value = check.metric("mean_abs_normalized")
    return f"{'pass' if check.status == 'pass' else check.status} {value:.1e}" if value is not None else check.status


def runtime_delta(model_dir: Path) -> str:
    """ClipOnnx (no torch in its path) from raw images and captions against the stored torch reference."""
    from clip_export.core.evalset import load_evalset
    from clip_export.core.manifest import intact_reference, read_manifest
    from clip_export.runtime import ClipOnnx

    manifest = read_manifest(model_dir)
    reference = np.load(intact_reference(model_dir, manifest, "the coverage check", f"{model_dir} has no reference")[1])
    runtime = ClipOnnx.from_release(model_dir, check="off")
    evalset = load_evalset()
    same_ids = np.array_equal(runtime.tokenize(list(evalset.captions)), reference["input_ids"])
    deltas = []
    for got, expected in (
        (runtime.embed_images(evalset.open_images()), reference["image_embeds"]),
        (runtime.embed_texts(list(evalset.captions)), reference["text_embeds"]),
    ):
        deltas.append(float(np.abs(got - expected / np.linalg.norm(expected, axis=-1, keepdims=True)).mean()))
    return f"{'ids equal' if same_ids else 'IDS DIFFER'}, {max(deltas):.1e}"


def run_one(family: str, model: str, need: str, scratch: Path) -> Row:
    from clip_export.core.models import resolve
    from clip_export.stages.convert import convert_fp16
    from clip_export.stages.export import export_onnx
    from clip_export.stages.quantize8.quantize8 import quantize_int8
    from clip_export.stages.verify import verify

    row = Row(family, model)
    started = time.perf_counter()
    steps: list[tuple[str, Callable[[], str]]] = []
    state: dict[str, Any] = {}

    def export() -> str:
        result = export_onnx(resolve(model, random_init=True, **stand_ins(need, scratch)), out=scratch / "out")
        state["dir"] = result.model_dir
        return f"pass {max(t.parity_mean_abs for t in result.towers):.1e}"

    def fp16() -> str:
        convert_fp16(state["dir"])
        return "converted"

    def int8() -> str:
        quantize_int8(state["dir"])
        return "converted"

    def verified() -> str:
        report = verify(state["dir"])
        by_precision = {c.precision: c for c in report.checks if c.format == "onnx"}
        worst = {
            p: max(
                (c for c in report.checks if c.precision == p and c.format == "onnx"),
                key=lambda c: c.metric("mean_abs_normalized") or 0,
            )
            for p in by_precision
        }
        for precision in ("fp16", "int8"):  # a conversion that failed its own gate keeps its FAIL
            if not getattr(row, precision).startswith("FAIL"):
                setattr(row, precision, _cell(worst[precision]) if precision in worst else "not run")
        return (
            "pass"
            if report.passed
            else "FAIL: "
            + "; ".join(
                f"{c.tower} {c.precision}: {', '.join(c.failures)}" for c in report.checks if c.status != "pass"
            )
        )

    steps = [
        ("export", export),
        ("fp16", fp16),
        ("int8", int8),
        ("verify", verified),
        ("runtime", lambda: runtime_delta(state["dir"])),
    ]
    for name, step in steps:
        try:
            value = step()
        except Exception as exc:  # a failed stage is a row's result, not the script's end
            setattr(row, name, f"FAIL: {str(exc).splitlines()[0][:140] if str(exc) else type(exc).__name__}")
            if name == "export":
                break
            continue
        if name not in ("fp16", "int8"):
            setattr(row, name, value)
    row.seconds = time.perf_counter() - started
    return row


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next(
        (line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    flags = next((set(line.split(":", 1)[1].split()) for line in info.splitlines() if line.startswith("flags")), set())
    return f"{name}; avx512f: {'yes' if 'avx512f' in flags else 'no'}, avx512_vnni: {'yes' if 'avx512_vnni' in flags else 'no'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="only these models (from the full list)")
    parser.add_argument("--full", action="store_true", help="also the base-size architectures")
    args = parser.parse_args()
    import open_clip

    open_clip.add_model_config(ROOT / "tests" / "configs")
    chosen = [r for r in (FULL if args.full or args.models else DEFAULT) if not args.models or r[1] in args.models]
    rows = []
    for family, model, need in chosen:
        scratch = Path(tempfile.mkdtemp(prefix="coverage-"))
        try:
            print(f"{model}...", file=sys.stderr, flush=True)
            rows.append(run_one(family, model, need, scratch))
        except Exception:
            traceback.print_exc()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {cpu()}, {len(__import__('os').sched_getaffinity(0))} cores; random weights, offline.\n"
    )
    print(
        "| family | model | export parity (mean \\|Δ\\|) | fp16 verify (mean \\|Δ\\|) | INT8 verify (mean \\|Δ\\|) | verify | runtime from raw inputs (max tower mean \\|Δ\\|) | time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.family} | {r.model} | {r.export} | {r.fp16} | {r.int8} | {r.verify} | {r.runtime} | {r.seconds:.0f} s |"
        )


if __name__ == "__main__":
    main()
