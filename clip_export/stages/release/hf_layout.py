"""The Hugging Face layout of a release: the file names and config keys transformers.js, optimum
and the hub expect, declared once here and written by `release` into `hf/` beside the assets
(optimum loads each tower by `subfolder`/`file_name`; docs/clients.md says what it cannot load).

    hf/config.json                 model_type, projection_dim, text/vision config, provenance
    hf/preprocessor_config.json    the manifest's preprocessing as a CLIPImageProcessor states it
    hf/tokenizer.json              the export's checked tokenizer (a standard tokenizers file)
    hf/tokenizer_config.json       model_max_length, special tokens, the pad token (id 0 "!" for CLIP)
    hf/onnx/vision_model{_fp16,_uint8,_int8,_q4}.onnx, hf/onnx/text_model….onnx
    hf/onnx/vision_model_preprocessing{…}.onnx    the graphs with preprocessing inside (ours; no
                                                  Hugging Face client looks for them)

Visual graphs are the released bytes (hard links). Text graphs take `input_ids` of any length and
pad or truncate them to the context inside the graph; where the tokenizer keeps an end token last when
it truncates (CLIP's end of text, BERT's [SEP], XLM-R's and mT5's </s>) they also put it back in
the last position when the ids were cut (transformers.js truncates after adding it: a 100-word
caption then measured cosine 0.199 against open_clip on CLIP, 0.991 on a MiniLM text tower). On ids
of the context's length that end in that token or padding the prefix changes nothing, so the
embeddings are the verified graph's (tests/stages/release/test_hf_layout.py checks them equal).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clip_export.core.artifact import ArtifactEntry, Manifest
from clip_export.core.errors import ReleaseError
from clip_export.core.manifest import MANIFEST_NAME
from clip_export.core.spec import (
    INT8_FAMILIES,
    ONNX_FORMAT,
    PRECISION_SPECS,
    PREPROCESSING_FORMAT,
    TOKENIZER_NAME,
    TOWERS,
    int8_family_of,
)

HF_DIR = "hf"
ONNX_DIR = "onnx"
CONFIG_NAME = "config.json"
PREPROCESSOR_CONFIG_NAME = "preprocessor_config.json"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
MODEL_FILE = {"visual": "vision_model", "text": "text_model"}
PREPROCESSING_MODEL_FILE = "vision_model_preprocessing"
# transformers.js's dtype suffixes (DEFAULT_DTYPE_SUFFIX_MAPPING); int8 goes by its kernel family's
# file tag, which is transformers.js's dtype too ("int8", "uint8").
DTYPE_SUFFIX = {p.name: p.hf_suffix for p in PRECISION_SPECS.values() if p.hf_suffix is not None}
INT8_SUFFIX = {family.name: f"_{family.file_tag}" for family in INT8_FAMILIES.values()}
# The other way: a file's suffix → the `dtype` a transformers.js user passes to load it.
TRANSFORMERS_JS_DTYPE = {
    **{suffix: precision for precision, suffix in DTYPE_SUFFIX.items()},
    **{suffix: suffix[1:] for suffix in INT8_SUFFIX.values()},
}
# transformers.js reads the external data of vision_model.onnx as vision_model.onnx_data,
# vision_model.onnx_data_1, … (the file's name + "_data"), and needs the count (config.json).
EXTERNAL_DATA_SUFFIX = "_data"
# PIL's resample codes, which preprocessor_config.json states (transformers.js defaults to bilinear).
PIL_RESAMPLE = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3}
MODEL_TYPE = {"siglip": "siglip"}  # every other family loads as CLIP
IMAGE_PROCESSOR = {"siglip": "SiglipImageProcessor"}
TEXT_PREFIX = "clip_export_text_ids/"


def onnx_file_name(entry: ArtifactEntry) -> str | None:
    """hf/onnx/ name of a manifest artifact; None for what Hugging Face clients cannot load (engines)."""
    if entry.format not in (ONNX_FORMAT, PREPROCESSING_FORMAT):
        return None
    precision = entry.precision
    if precision == "int8":
        family = int8_family_of(entry)
        suffix = INT8_SUFFIX.get(family.name) if family else None
    else:
        suffix = DTYPE_SUFFIX.get(precision)
    if suffix is None:
        raise ReleaseError(f"{entry.path}: precision {precision} has no transformers.js file name")
    base = PREPROCESSING_MODEL_FILE if entry.format == PREPROCESSING_FORMAT else MODEL_FILE[entry.tower]
    return f"{base}{suffix}.onnx"


def transformers_js_load(file_name: str) -> tuple[str, str]:
    """(model_file_name, dtype) that make transformers.js load hf/onnx/`file_name`."""
    stem = file_name.removesuffix(".onnx")
    for suffix, dtype in sorted(TRANSFORMERS_JS_DTYPE.items(), key=lambda item: -len(item[0])):
        base = stem.removesuffix(suffix) if suffix else stem
        if (not suffix or stem.endswith(suffix)) and base in (*MODEL_FILE.values(), PREPROCESSING_MODEL_FILE):
            return base, dtype
    raise ReleaseError(f"hf/{ONNX_DIR}/{file_name} is not a name this layout writes")


def config_json(manifest: Manifest, external_data: Mapping[str, int]) -> dict[str, Any]:
    model, tok, pre = manifest.model, manifest.tokenizer, manifest.preprocess
    family = model.family
    config: dict[str, Any] = {
        "architectures": ["SiglipModel" if family == "siglip" else "CLIPModel"],
        "model_type": MODEL_TYPE.get(family, "clip"),
        "projection_dim": model.embed_dim,
        "text_config": {
            "max_position_embeddings": tok.context_length,
            "vocab_size": tok.vocab_size,
            "bos_token_id": tok.sot_token_id,
            "eos_token_id": tok.eot_token_id,
            "pad_token_id": tok.pad_token_id,
            "projection_dim": model.embed_dim,
        },
        "vision_config": {"image_size": int(pre.image_size[0]), "projection_dim": model.embed_dim},
        "clip_export": {
            "model": model.name,
            "arch": model.arch,
            "pretrained": model.pretrained,
            "source": model.source,
            "manifest": f"../{MANIFEST_NAME}",
            "text_model_input": f"input_ids int64 [batch, any length], padded with id {tok.pad_token_id} or truncated "
            f"to {tok.context_length} in the graph",
            "onnx_only": "config.json describes the ONNX files under onnx/; there are no PyTorch weights",
        },
    }
    if external_data:
        config["transformers.js_config"] = {"use_external_data_format": dict(external_data)}
    return config


def preprocessor_config(manifest: Manifest) -> dict[str, Any]:
    """CLIPImageProcessor keys for the manifest's preprocessing, every one stated (transformers.js's
    defaults differ: no normalisation, bilinear)."""
    pre, family = manifest.preprocess, manifest.model.family
    height, width = (int(v) for v in pre.image_size)
    if pre.interpolation not in PIL_RESAMPLE:
        raise ReleaseError(f"interpolation {pre.interpolation!r} has no PIL resample code for preprocessor_config.json")
    config: dict[str, Any] = {
        "image_processor_type": IMAGE_PROCESSOR.get(family, "CLIPImageProcessor"),
        "do_resize": True,
        "resample": PIL_RESAMPLE[pre.interpolation],
        "do_convert_rgb": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(pre.mean),
        "image_std": list(pre.std),
    }
    if pre.resize_mode == "squash":
        config.update(size={"height": height, "width": width}, do_center_crop=False)
    elif pre.resize_mode == "shortest" and height == width:
        config.update(size={"shortest_edge": height}, do_center_crop=True, crop_size={"height": height, "width": width})
    else:
        raise ReleaseError(
            f"resize mode {pre.resize_mode!r} with a {height}x{width} crop has no CLIPImageProcessor equivalent"
        )
    return config


def tokenizer_config(manifest: Manifest, tokenizer: Any) -> dict[str, Any]:
    """model_max_length and the special tokens by name. The pad token (id 0, "!" for CLIP) is named
    but not listed as an added token: listed, transformers.js would split "wow!" into the pad id."""
    tok = manifest.tokenizer

    def name(token_id: int | None) -> str | None:
        return None if token_id is None else tokenizer.id_to_token(int(token_id))

    config: dict[str, Any] = {
        "tokenizer_class": "CLIPTokenizer" if tok.kind == "clip-bpe" else "PreTrainedTokenizerFast",
        "model_max_length": tok.context_length,
        "pad_token": name(tok.pad_token_id),
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
            for t in json.loads(tokenizer.to_str())["added_tokens"]
        },
    }
    for key, token_id in (("bos_token", tok.sot_token_id), ("eos_token", tok.eot_token_id)):
        if name(token_id) is not None:
            config[key] = name(token_id)
    if tok.kind == "clip-bpe":
        config["unk_token"] = config["eos_token"]
    return config


def standard_tokenizer(manifest: Manifest, path: Path) -> Any:
    """The released tokenizer.json; a CLIP one exported before it carried its normalizer gets it."""
    from clip_export.core.tokenizer import _tokenizers, clip_normalizer

    tokenizer = _tokenizers().Tokenizer.from_file(str(path))
    if manifest.tokenizer.kind == "clip-bpe" and manifest.tokenizer.clean == "lower" and tokenizer.normalizer is None:
        tokenizer.normalizer = clip_normalizer()
    return tokenizer


def end_token_kept_last(manifest: Manifest, staging: Path) -> int | None:
    """The id the export's tokenizer (open_clip's ids, checked at export) keeps in the last position when
    it truncates: CLIP's end of text, BERT's [SEP], XLM-R's and mT5's </s>; None where it keeps a word
    there. transformers.js truncates after adding special tokens, so its ids end in a word instead."""
    from clip_export.core.tokenizer import TextTokenizer

    tok = manifest.tokenizer
    tokenizer_file = manifest.section_file("tokenizer.file", str(staging))
    if tokenizer_file is None or tok.eot_token_id is None:  # exports from before tokenizer.json: CLIP's BPE
        return tok.eot_token_id if tok.kind == "clip-bpe" else None
    ids = TextTokenizer.from_file(staging / tokenizer_file.path, tok)(["a " * (2 * tok.context_length)])
    return tok.eot_token_id if int(ids[0, -1]) == tok.eot_token_id else None


def text_graph_for_clients(model: Any, context_length: int, pad_token_id: int, eot_token_id: int | None) -> Any:
    """The text graph with `input_ids` of any length: padded with the pad id or cut to the context
    in the graph, and, when `eot_token_id` is given (the tokenizer keeps it last when it truncates),
    the last position set to it unless it is padding, which is what open_clip's truncation gives. In place."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    name = TOWERS["text"].input_name
    graph = model.graph
    if [i.name for i in graph.input] != [name]:
        raise ReleaseError(f"the text graph's inputs are {[i.name for i in graph.input]}, expected [{name}]")
    inner = TEXT_PREFIX + name
    for node in graph.node:
        node.input[:] = [inner if i == name else i for i in node.input]
    for output in graph.output:
        if output.name == name:
            raise ReleaseError("the text graph returns its input_ids; nothing to wrap")
    inits, nodes = [], []

    def const(key: str, value: Any) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=np.int64), TEXT_PREFIX + key))
        return TEXT_PREFIX + key

    def node(op: str, inputs: list[str], key: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [TEXT_PREFIX + key], name=TEXT_PREFIX + key, **attrs))
        return TEXT_PREFIX + key

    length = node("Slice", [node("Shape", [name], "shape"), const("one", [1]), const("two", [2])], "length")
    missing = node(
        "Max", [node("Sub", [const("context", [context_length]), length], "short_by"), const("zero", [0])], "missing"
    )
    pads = node("Concat", [const("zeros3", [0, 0, 0]), missing], "pads", axis=0)
    padded = node("Pad", [name, pads, const("pad_id", pad_token_id)], "padded", mode="constant")
    if eot_token_id is None:
        nodes.append(
            helper.make_node(
                "Slice",
                [padded, const("start", [0]), const("end", [context_length]), const("axis", [1])],
                [inner],
                name=inner,
            )
        )
    else:
        head = node(
            "Slice", [padded, const("start", [0]), const("head_end", [context_length - 1]), const("axis", [1])], "head"
        )
        last = node(
            "Slice",
            [padded, const("last_start", [context_length - 1]), const("end", [context_length]), const("axis2", [1])],
            "last",
        )
        kept = node(
            "Where",
            [
                node("Equal", [last, const("pad_id_1", [[pad_token_id]])], "is_pad"),
                last,
                const("eot", [[eot_token_id]]),
            ],
            "last_fixed",
        )
        nodes.append(helper.make_node("Concat", [head, kept], [inner], name=inner, axis=1))
    existing = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *existing])
    graph.initializer.extend(inits)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]))
    return model


def _link(source: Path, target: Path) -> None:
    """A hard link (same bytes, no second copy on disk); a copy where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_layout(staging: Path, manifest: Manifest) -> dict[str, Any]:
    """Write hf/ inside the staged release, whose manifest already names the released assets;
    returns the manifest's `hf_layout` record (every file with its sha256)."""
    import onnx

    from clip_export.core.manifest import file_record

    root = staging / HF_DIR
    (root / ONNX_DIR).mkdir(parents=True)
    tok = manifest.tokenizer
    end_token = end_token_kept_last(manifest, staging)
    names: dict[str, str] = {}
    external: dict[str, int] = {}
    for entry in manifest.artifacts:
        target = onnx_file_name(entry)
        if target is None:
            continue
        if target in names:
            raise ReleaseError(
                f"{entry.path} and {names[target]} would both be hf/{ONNX_DIR}/{target}; release one of them"
            )
        names[target] = entry.path
        source = staging / entry.path
        out = root / ONNX_DIR / target
        data = entry.external_data
        if entry.tower == "text" and entry.format == ONNX_FORMAT:
            model = onnx.load(str(source), load_external_data=bool(data))
            text_graph_for_clients(model, tok.context_length, tok.pad_token_id, end_token)
            if data:
                onnx.save_model(
                    model,
                    str(out),
                    save_as_external_data=True,
                    all_tensors_to_one_file=True,
                    location=target + EXTERNAL_DATA_SUFFIX,
                )
                shutil.copymode(out, root / ONNX_DIR / (target + EXTERNAL_DATA_SUFFIX))  # onnx writes it 0600
                external[target] = 1
            else:
                onnx.save_model(model, str(out))
        elif data:
            model = onnx.load(str(source), load_external_data=False)
            renames = {
                Path(r.path).name: target + EXTERNAL_DATA_SUFFIX + ("" if i == 0 else f"_{i}")
                for i, r in enumerate(data)
            }
            for tensor in model.graph.initializer:
                for item in tensor.external_data:
                    if item.key == "location":
                        item.value = renames[item.value]
            onnx.save_model(model, str(out))
            for old, new in renames.items():
                _link(staging / old, root / ONNX_DIR / new)
            external[target] = len(renames)
        else:
            _link(source, out)
    configs: list[tuple[str, dict[str, Any]]] = [
        (CONFIG_NAME, config_json(manifest, external)),
        (PREPROCESSOR_CONFIG_NAME, preprocessor_config(manifest)),
    ]
    tokenizer_file = manifest.section_file("tokenizer.file", str(staging))
    if tokenizer_file:  # exports from before tokenizer.json (a BPE vocabulary only) get no tokenizer files
        tokenizer = standard_tokenizer(manifest, staging / tokenizer_file.path)
        tokenizer.save(str(root / TOKENIZER_NAME))
        configs.append((TOKENIZER_CONFIG_NAME, tokenizer_config(manifest, tokenizer)))
    for file_name, content in configs:
        (root / file_name).write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {
        "dir": HF_DIR,
        "onnx": {name: src for name, src in sorted(names.items())},
        "files": [file_record(p, staging).to_json() for p in files],
    }
