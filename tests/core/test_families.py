"""Each family end to end offline (tiny configs, tokenizers built here), and bad input refused
with one line before any export time is spent and nothing written."""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import clip_export
from clip_export.cli import main
from clip_export.core.errors import ClipExportError, MissingExtraError
from clip_export.core.families import FAMILIES, FamilyRules, family_for
from clip_export.core.manifest import read_manifest
from clip_export.core.models import load_model, model_config, resolve
from clip_export.core.spec import EXPORT_PARITY_TOLERANCE
from clip_export.runtime import ClipOnnx
from clip_export.stages.convert import convert_fp16
from clip_export.stages.export import export_onnx
from clip_export.stages.quantize8.quantize8 import quantize_int8
from clip_export.stages.verify import verify


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _serves_like_torch(model_dir: Path, precision: str = "fp32") -> None:
    """ClipOnnx from raw images and captions against the fp32 torch reference of the export."""
    manifest = read_manifest(model_dir)
    reference = np.load(model_dir / manifest.section("reference")["path"])
    runtime = ClipOnnx.from_release(model_dir, precision=precision, check="off")
    from clip_export.core.evalset import load_evalset

    evalset = load_evalset()
    assert np.array_equal(runtime.tokenize(list(evalset.captions)), reference["input_ids"])
    texts = runtime.embed_texts(list(evalset.captions))
    images = runtime.embed_images(evalset.open_images())
    for got, expected in ((texts, reference["text_embeds"]), (images, reference["image_embeds"])):
        expected = expected / np.linalg.norm(expected, axis=-1, keepdims=True)
        assert np.abs(got - expected).mean() <= EXPORT_PARITY_TOLERANCE


def test_every_family_row_is_declared_once_and_the_default_is_last() -> None:
    assert len({f.name for f in FAMILIES}) == len(FAMILIES) and FAMILIES[-1].name == "clip"
    assert family_for("ViT-B-16-SigLIP2", model_config("ViT-B-16-SigLIP2")).tokenizer == "hf"
    assert family_for("nllb-clip-base", model_config("nllb-clip-base")).needs_transformers
    assert family_for("MobileCLIP2-S0", model_config("MobileCLIP2-S0")).reparameterize
    assert family_for("ViT-B-32", model_config("ViT-B-32")).tokenizer == "clip-bpe"
    assert family_for("coca_ViT-B-32", model_config("coca_ViT-B-32")).name == "coca"


def test_every_family_rule_but_its_note_drives_code() -> None:
    """A rule no code reads is a claim nothing checks (text_pool was one): each field is read somewhere."""
    package = Path(clip_export.__file__).parent
    read = {
        node.attr
        for path in package.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
    }
    assert sorted(f.name for f in dataclasses.fields(FamilyRules) if f.name not in read) == ["note"]


def test_siglip_exports_converts_verifies_and_serves_offline(siglip_tokenizer_dir: Path, tmp_path: Path) -> None:
    result = export_onnx(resolve("tiny-SigLIP", random_init=True, tokenizer=siglip_tokenizer_dir), out=tmp_path)
    manifest = read_manifest(result.model_dir)
    assert manifest.section("model")["family"] == "siglip"
    assert manifest.section("preprocess")["resize_mode"] == "squash" and manifest.section("preprocess")["mean"] == [
        0.5,
        0.5,
        0.5,
    ]
    assert (
        manifest.section("tokenizer")["clean"] == "canonicalize"
        and manifest.section("tokenizer")["sot_token_id"] is None
    )
    convert_fp16(result.model_dir)
    quantize_int8(result.model_dir)
    report = verify(result.model_dir)
    assert report.passed, [c for c in report.checks if not c.passed]
    _serves_like_torch(result.model_dir)


def test_coca_text_tower_exports_encode_text_pooling_the_appended_cls_token(tmp_path: Path) -> None:
    """CoCa's contrastive text embedding is the CLS token open_clip appends after the caption (the
    last position), not EOT ArgMax: the traced graph is encode_text's, with no ArgMax in it."""
    import onnx

    result = export_onnx(resolve("tiny-coca", random_init=True), out=tmp_path)
    manifest = read_manifest(result.model_dir)
    assert manifest.section("model")["family"] == "coca" and manifest.section("tokenizer")["context_length"] == 76
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)
    text = next(a for a in manifest.artifacts if a.tower == "text" and a.format == "onnx")
    assert "ArgMax" not in {n.op_type for n in onnx.load(str(result.model_dir / text.path)).graph.node}
    _serves_like_torch(result.model_dir)


def test_xlm_roberta_text_tower_exports_and_serves_offline(xlmr_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    tokenizer, config = xlmr_dirs
    result = export_onnx(
        resolve("tiny-xlm-roberta-ViT", random_init=True, tokenizer=tokenizer, text_config=config), out=tmp_path
    )
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)
    manifest = read_manifest(result.model_dir)
    assert manifest.section("model")["family"] == "hf-text" and manifest.section("tokenizer")["pad_token_id"] == 1
    # Its padding is masked, so the text graph cuts it (the parity gate above ran short captions too).
    assert manifest.find(tower="text", precision="fp32").detail("trims_trailing_padding") is True
    assert verify(result.model_dir).passed
    _serves_like_torch(result.model_dir)


def test_mt5_text_tower_pads_with_0_ends_with_eos_and_mean_pools_under_the_mask(
    mt5_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """mT5 (a T5 encoder) needs no rule of its own: the hf-text row gives it its tokenizer (no start
    token, </s> appended, <pad> 0, which the tower masks) and open_clip's mean pooler; every
    precision passes and the runtime serves it."""
    tokenizer, config = mt5_dirs
    result = export_onnx(
        resolve("tiny-mt5-ViT", random_init=True, tokenizer=tokenizer, text_config=config), out=tmp_path
    )
    manifest = read_manifest(result.model_dir)
    assert manifest.section("model")["family"] == "hf-text"
    assert (
        manifest.section("tokenizer")["pad_token_id"],
        manifest.section("tokenizer")["sot_token_id"],
        manifest.section("tokenizer")["eot_token_id"],
    ) == (0, None, 1)
    ids = ClipOnnx.from_release(result.model_dir, check="off").tokenize(["a photo of a cat"])[0]
    assert ids[0] not in (0, 1) and list(ids).index(0) - 1 == list(ids).index(1)
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)
    # T5 computes its relative-position buckets in float: cut to a run-time length, fp16 moves them.
    assert manifest.find(tower="text", precision="fp32").detail("trims_trailing_padding") is None
    convert_fp16(result.model_dir)
    quantize_int8(result.model_dir)
    report = verify(result.model_dir)
    assert report.passed, [c for c in report.checks if not c.passed]
    _serves_like_torch(result.model_dir)


def test_nllb_captions_start_with_the_family_language_recorded_in_the_manifest(
    nllb_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """The tokenizer's own config says fra_Latn; the family rule (eng_Latn) wins, in the checked ids,
    the bundled tokenizer.json and the manifest."""
    tokenizer, config = nllb_dirs
    result = export_onnx(
        resolve("tiny-nllb-ViT", random_init=True, tokenizer=tokenizer, text_config=config), out=tmp_path
    )
    manifest = read_manifest(result.model_dir)
    assert manifest.section("model")["family"] == "nllb" and manifest.section("tokenizer")["language"] == "eng_Latn"
    english = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"].index(["eng_Latn", 0.0])
    ids = ClipOnnx.from_release(result.model_dir, check="off").tokenize(["a photo of a cat"])
    assert ids[0, 0] == english and ids[0, 1] != english
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)
    assert manifest.find(tower="text", precision="fp32").detail("trims_trailing_padding") is True
    _serves_like_torch(result.model_dir)


def test_mobileclip_is_reparameterized_before_export_and_matches_the_unfolded_model(tmp_path: Path) -> None:
    import torch

    spec = resolve("tiny-MobileCLIP", random_init=True)
    loaded = load_model(spec)
    assert loaded.family == "mobileclip" and loaded.reparameterized_modules > 0
    import open_clip

    torch.manual_seed(spec.seed)
    unfolded = open_clip.create_model("tiny-MobileCLIP", pretrained=None).float().eval()
    convs = [sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) for model in (loaded.model, unfolded)]
    assert convs[0] < convs[1], f"the branches were not folded: {convs[0]} convolutions after, {convs[1]} before"
    pixels = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        a, b = loaded.model.encode_image(pixels, normalize=True), unfolded.encode_image(pixels, normalize=True)
    assert float((a - b).abs().mean()) <= EXPORT_PARITY_TOLERANCE
    result = export_onnx(spec, out=tmp_path, loaded=loaded)
    assert read_manifest(result.model_dir).section("model")["reparameterized_modules"] == loaded.reparameterized_modules
    _serves_like_torch(result.model_dir)


def test_mobileclip_int8_keeps_its_linear_projection_float_and_passes(tmp_path: Path) -> None:
    """timm's head is a Linear, so a Gemm, which onnxruntime's quantizer renamed before reading the
    exclusions: the projection was quantized with one activation scale per batch and failed (0.074)."""
    import onnx

    result = export_onnx(resolve("tiny-MobileCLIP", random_init=True), out=tmp_path)
    converted = quantize_int8(result.model_dir, towers=["visual"])
    assert converted.artifacts[0].verdict == "pass"
    graph = onnx.load(str(result.model_dir / "visual.int8.onnx")).graph
    producer = next(n for n in graph.node if "image_embeds" in n.output)
    assert producer.op_type in ("MatMul", "Gemm", "Add"), producer.op_type


def _refused(args: list[str], message: str, out: Path) -> None:
    result = CliRunner().invoke(main, ["onnx", *args, "--random-init", "--quiet", "--out", str(out)])
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("Error: ") and message in lines[0], result.output
    assert not out.exists(), "nothing may be written for bad input"


def test_siglip_without_its_tokenizer_offline_says_how_to_pass_one(tmp_path: Path) -> None:
    _refused(["tiny-SigLIP"], "pass --tokenizer DIR", tmp_path / "out")


def test_an_unknown_architecture_is_refused(tmp_path: Path) -> None:
    _refused(["ViT-Q-99"], "unknown model 'ViT-Q-99'", tmp_path / "out")


def test_a_tokenizer_dir_without_tokenizer_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    _refused(["tiny-SigLIP", "--tokenizer", str(tmp_path / "empty")], "has no tokenizer.json", tmp_path / "out")


def test_a_tokenizer_for_a_clip_bpe_model_is_refused(siglip_tokenizer_dir: Path, tmp_path: Path) -> None:
    _refused(
        ["tiny-vit", "--tokenizer", str(siglip_tokenizer_dir)],
        "tokenizes with open_clip's bundled CLIP BPE",
        tmp_path / "out",
    )


def test_a_tokenizer_of_another_model_is_refused(
    xlmr_dirs: tuple[Path, Path], siglip_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """SigLIP's tokenizer pads with 0, the XLM-R tower masks 1: refused before tracing."""
    _refused(
        ["tiny-xlm-roberta-ViT", "--tokenizer", str(siglip_tokenizer_dir), "--text-config", str(xlmr_dirs[1])],
        "pads with id 0, but tiny-xlm-roberta-ViT's text tower masks id 1",
        tmp_path / "out",
    )


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(300)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    (tmp_path / "big").mkdir()
    tokenizer.save(str(tmp_path / "big" / "tokenizer.json"))
    (tmp_path / "big" / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "pad_token": "<pad>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    _refused(
        ["tiny-SigLIP", "--tokenizer", str(tmp_path / "big")],
        "has 303 tokens, but tiny-SigLIP's text tower embeds 128",
        tmp_path / "out",
    )


def test_a_text_config_of_another_family_is_refused(tmp_path: Path) -> None:
    from transformers import BertConfig

    BertConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(tmp_path / "bert")
    _refused(
        ["tiny-xlm-roberta-ViT", "--text-config", str(tmp_path / "bert")],
        "is a 'bert' config, but tiny-xlm-roberta-ViT's text tower is xlm-roberta-base ('xlm-roberta')",
        tmp_path / "out",
    )


def test_a_text_config_for_an_open_clip_text_tower_is_refused(xlmr_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    _refused(
        ["tiny-vit", "--text-config", str(xlmr_dirs[1])],
        "--text-config is for Hugging Face text towers",
        tmp_path / "out",
    )


def test_an_hf_text_tower_without_its_config_offline_says_how_to_pass_one(
    xlmr_dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    _refused(["tiny-xlm-roberta-ViT", "--tokenizer", str(xlmr_dirs[0])], "pass --text-config DIR", tmp_path / "out")


def test_a_resize_mode_we_do_not_implement_is_refused(tmp_path: Path) -> None:
    import open_clip

    config = json.loads((Path(__file__).resolve().parents[1] / "configs" / "tiny-vit.json").read_text())
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-longest.json").write_text(
        json.dumps({**config, "preprocess_cfg": {"resize_mode": "longest"}})
    )
    open_clip.add_model_config(tmp_path / "cfg")
    _refused(
        ["tiny-longest"], "asks for resize_mode 'longest'; clip-export implements shortest, squash", tmp_path / "out"
    )


def test_a_missing_transformers_names_our_extra(monkeypatch: pytest.MonkeyPatch, xlmr_dirs: tuple[Path, Path]) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(
        MissingExtraError,
        match=r"needs the 'transformers' package, which is not installed; install it with: pip install 'clip-export\[hf\]'",
    ):
        resolve("tiny-xlm-roberta-ViT", random_init=True, text_config=xlmr_dirs[1])


def test_squash_family_is_served_without_a_crop(siglip_tokenizer_dir: Path) -> None:
    """A wide image is squashed whole (both edges of the picture reach the tensor), not cropped."""
    loaded = load_model(resolve("tiny-SigLIP", random_init=True, tokenizer=siglip_tokenizer_dir))
    with pytest.raises(ClipExportError):
        load_model(resolve("tiny-SigLIP", random_init=True, tokenizer=siglip_tokenizer_dir / "tokenizer.json"))
    assert loaded.preprocess.resize_mode == "squash"


def test_a_pretrained_tag_picks_its_own_preprocessing_and_random_weights_take_the_first_tags() -> None:
    """ViT-H-14-quickgelu's tags disagree: metaclip_fullcc (its first) resizes the shortest side,
    dfn5b squashes. The tag named wins; --random-init takes the first tag's (configs only, no build)."""
    from clip_export.core.models import preflight

    assert preflight(resolve("ViT-H-14-quickgelu:dfn5b"))[2]["resize_mode"] == "squash"
    assert preflight(resolve("ViT-H-14-quickgelu", random_init=True))[2]["resize_mode"] == "shortest"
