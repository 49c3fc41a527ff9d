"""Test helpers that tamper with artifacts the way real damage or bugs would."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.checks import ArtifactCheck
from clip_export.core.manifest import file_record, read_manifest, write_manifest


def rewrite_initializer(
    model_dir: Path,
    artifact_path: str,
    change: Callable[[np.ndarray], np.ndarray],
    pick: Callable[[onnx.TensorProto], bool] | None = None,
) -> str:
    """Change one float initializer and re-hash it in the manifest, so only the numbers are wrong."""
    path = model_dir / artifact_path
    model = onnx.load(str(path))
    candidates = [
        t
        for t in model.graph.initializer
        if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and (pick is None or pick(t))
    ]
    target = max(candidates, key=lambda t: int(np.prod(t.dims)))
    target.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(target)).astype(np.float32), target.name))
    onnx.save(model, str(path))
    manifest = read_manifest(model_dir)
    entry = manifest.find(path=artifact_path)
    assert entry is not None
    manifest.upsert(entry.moved(file_record(path, model_dir), entry.external_data))
    write_manifest(model_dir, manifest)
    return target.name


def flip_byte(path: Path, offset_fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))


def train_unigram_tokenizer(directory: Path, specials: list[str], template: str, config: dict[str, object]) -> Path:
    """A tiny SentencePiece-style (Unigram + Metaspace) tokenizer.json trained here on the bundled
    captions, so Hugging Face families are tested offline with their own kind of tokenizer."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from clip_export.core.evalset import load_evalset

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>")
    tokenizer.train_from_iterator(list(load_evalset().captions) * 4, trainer)
    ids = {token: tokenizer.token_to_id(token) for token in specials}
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, ids[t]) for t in specials if t in template]
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config})
    )
    return directory


def train_nllb_tokenizer(
    directory: Path, codes: tuple[str, ...] = ("eng_Latn", "fra_Latn"), src_lang: str = "fra_Latn"
) -> Path:
    """NLLB's special-token layout (<s> 0, <pad> 1, </s> 2, <unk> 3, then language codes) on a tiny
    Unigram trained on the captions, loaded as transformers' NllbTokenizer, which puts the source
    language first; `src_lang` is what the tokenizer would use unless the family rule sets it."""
    import json

    specials = {
        "bos_token": "<s>",
        "pad_token": "<pad>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "cls_token": "<s>",
        "sep_token": "</s>",
    }
    train_unigram_tokenizer(directory, ["<s>", "<pad>", "</s>", "<unk>", *codes], "$A </s>", specials)
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {**settings, "tokenizer_class": "NllbTokenizer", "extra_special_tokens": list(codes), "src_lang": src_lang}
        )
    )
    return directory


def swap_tokenizer_ids(model_dir: Path, first: str = "a</w>", second: str = "the</w>", rehash: bool = True) -> None:
    """A tokenizer.json that still loads but gives other ids (two vocabulary entries swap ids),
    re-hashed into the manifest when `rehash`, as a careless re-export would leave it."""
    import json

    from clip_export.core.manifest import file_record, read_manifest, write_manifest

    path = model_dir / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(data))
    if rehash:
        manifest = read_manifest(model_dir)
        manifest.section("tokenizer")["file"] = file_record(path, model_dir).to_json()
        write_manifest(model_dir, manifest)


def train_byte_level_bpe_tokenizer(
    directory: Path, specials: list[str], config: dict[str, object], vocab_size: int = 400
) -> Path:
    """A tiny RoBERTa-style (byte-level BPE, `<s> $A </s>`) tokenizer.json trained here on the
    bundled captions; `specials` take ids 0.. in order, so they can match a config's pad/bos/eos ids."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from clip_export.core.evalset import load_evalset

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(list(load_evalset().captions) * 4, trainer)
    bos, eos = str(config["bos_token"]), str(config["eos_token"])
    tokenizer.post_processor = processors.RobertaProcessing(
        (eos, tokenizer.token_to_id(eos)), (bos, tokenizer.token_to_id(bos)), add_prefix_space=False
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", **config})
    )
    return directory


def perturbed_release(model_dir: Path, scale: float = 0.5, seed: int = 0) -> None:
    """A "new release" of the same model: the visual tower's largest weight perturbed, and its
    stored reference recomputed from the perturbed fp32 graph, so it passes its own checks."""
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    rewrite_initializer(model_dir, "visual.onnx", lambda w: w + rng.normal(0, scale, w.shape))
    manifest = read_manifest(model_dir)
    record = manifest.section("reference")
    path = model_dir / record["path"]
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    session = ort.InferenceSession(str(model_dir / "visual.onnx"), providers=["CPUExecutionProvider"])
    arrays["image_embeds"] = session.run(None, {"pixel_values": arrays["pixel_values"]})[0]
    np.savez(path, **arrays)
    record.update(file_record(path, model_dir).to_json())
    manifest.drop_section("verification")
    write_manifest(model_dir, manifest)


def move_weights_to_unlisted_data(model_dir: Path, artifact_path: str = "visual.onnx", location: str = "") -> str:
    """Move an artifact's weights into an external-data file the manifest does not list, and re-hash the
    graph in the manifest: the graph is intact, the bytes it reads were never hashed."""
    path = model_dir / artifact_path
    location = location or f"{path.name}.extra"
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    manifest = read_manifest(model_dir)
    entry = manifest.find(path=artifact_path)
    assert entry is not None
    manifest.upsert(entry.moved(file_record(path, model_dir), ()))
    write_manifest(model_dir, manifest)
    return location


def fail_gate_where(
    monkeypatch: pytest.MonkeyPatch,
    fails: Callable[[ArtifactEntry], bool],
    failure: str = "mean_abs_normalized = 0.0047",
) -> Callable[[], None]:
    """Make the conversions' gate fail the entries `fails` picks (the real gate still runs; only its
    verdict changes), the way a trained tower's outliers fail it; returns what puts the real gate back."""
    from clip_export.core import conversion

    real_gate = conversion.gate

    def gate(model_dir: Path, entry: ArtifactEntry, provider: str = "cpu") -> ArtifactCheck:
        check = real_gate(model_dir, entry, provider)
        return dataclasses.replace(check, status="fail", failures=(failure,)) if fails(entry) else check

    monkeypatch.setattr(conversion, "gate", gate)
    return lambda: monkeypatch.setattr(conversion, "gate", real_gate)
