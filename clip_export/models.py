"""Model spec and loading: names users type, where weights come from, and how they load safely."""
from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import socket
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UnknownModelError, UnsafeCheckpointError, WeightsError, import_optional

# The names of OpenAI's `clip` package, as users type them, and the open_clip architecture that
# holds the same graph (OpenAI's weights were trained with QuickGELU).
OPENAI_NAMES: dict[str, str] = {
    "RN50": "RN50-quickgelu",
    "RN101": "RN101-quickgelu",
    "RN50x4": "RN50x4-quickgelu",
    "RN50x16": "RN50x16-quickgelu",
    "RN50x64": "RN50x64-quickgelu",
    "ViT-B/32": "ViT-B-32-quickgelu",
    "ViT-B/16": "ViT-B-16-quickgelu",
    "ViT-L/14": "ViT-L-14-quickgelu",
    "ViT-L/14@336px": "ViT-L-14-336-quickgelu",
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
OFFLINE_HINT = "pass --weights PATH for a local checkpoint, or --random-init for seeded random weights"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, resolved to an open_clip architecture and one weights source."""

    name: str
    arch: str
    pretrained: str | None = None
    weights: Path | None = None
    random_init: bool = False
    seed: int = 0
    hf_dir: Path | None = None

    @property
    def slug(self) -> str:
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in self.name).strip("-.")

    @property
    def source(self) -> str:
        if self.random_init:
            return f"random-init(seed={self.seed})"
        if self.hf_dir is not None:
            return f"huggingface:{self.hf_dir}"
        if self.weights is not None:
            return f"file:{self.weights}"
        return f"open_clip:{self.arch}:{self.pretrained}"


@dataclass(frozen=True)
class PreprocessConfig:
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def to_json(self) -> dict[str, Any]:
        return {
            "image_size": list(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PreprocessConfig":
        return cls(
            image_size=tuple(data["image_size"]),  # type: ignore[arg-type]
            mean=tuple(data["mean"]),  # type: ignore[arg-type]
            std=tuple(data["std"]),  # type: ignore[arg-type]
            interpolation=data.get("interpolation", "bicubic"),
            resize_mode=data.get("resize_mode", "shortest"),
        )


@dataclass(frozen=True)
class TokenizerConfig:
    context_length: int
    sot_token_id: int
    eot_token_id: int
    kind: str = "open_clip"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LoadedModel:
    """A model in memory with what export and verify need to know about it."""

    spec: ModelSpec
    model: Any  # torch.nn.Module with encode_image/encode_text
    preprocess: PreprocessConfig
    tokenizer: TokenizerConfig
    tokenize: Callable[[Sequence[str]], Any]
    embed_dim: int
    checkpoint_sha256: str | None = None
    checkpoint_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def manifest_section(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "arch": self.spec.arch,
            "pretrained": self.spec.pretrained,
            "source": self.spec.source,
            "random_init": self.spec.random_init,
            "seed": self.spec.seed if self.spec.random_init else None,
            "checkpoint": str(self.checkpoint_path) if self.checkpoint_path else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "embed_dim": self.embed_dim,
        }


def _open_clip() -> Any:
    import open_clip

    logging.getLogger("root").setLevel(logging.ERROR)  # open_clip warns through the root logger
    return open_clip


def known_architectures() -> list[str]:
    return list(_open_clip().list_models())


def resolve(
    name: str,
    *,
    pretrained: str | None = None,
    weights: str | Path | None = None,
    random_init: bool = False,
    seed: int = 0,
) -> ModelSpec:
    """Turn what the user typed into a ModelSpec, or say what exists instead."""
    chosen = [x for x in (pretrained, weights, random_init or None) if x]
    if len(chosen) > 1:
        raise WeightsError("choose one weights source: --pretrained TAG, --weights PATH or --random-init")
    candidate_dir = Path(name)
    if candidate_dir.is_dir() and (candidate_dir / "config.json").exists():
        return ModelSpec(name=candidate_dir.name, arch="hf-clip", hf_dir=candidate_dir.resolve())
    if weights is not None and Path(weights).is_dir():
        if not (Path(weights) / "config.json").exists():
            raise WeightsError(f"--weights {weights} is a directory without config.json; expected a Hugging Face CLIP directory")
        return ModelSpec(name=name, arch="hf-clip", hf_dir=Path(weights).resolve())

    arch, tag = name, None
    if name in OPENAI_NAMES:
        arch, tag = OPENAI_NAMES[name], "openai"
    elif ":" in name:
        arch, tag = name.split(":", 1)
    archs = known_architectures()
    if arch not in archs:
        close = difflib.get_close_matches(name, list(OPENAI_NAMES) + archs, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; run 'clip-export models' for the list"
        raise UnknownModelError(f"unknown model '{name}'{hint}")
    if pretrained is not None:
        tag = pretrained
    if random_init or weights is not None:
        tag = None
    elif tag is None:
        tags = pretrained_tags(arch)
        if not tags:
            raise WeightsError(f"{arch} has no pretrained weights in open_clip; {OFFLINE_HINT}")
        tag = tags[0]
    if tag is not None and tag not in pretrained_tags(arch):
        raise WeightsError(
            f"{arch} has no pretrained tag '{tag}'; available: {', '.join(pretrained_tags(arch)) or 'none'}"
        )
    if weights is not None and not Path(weights).is_file():
        raise WeightsError(f"--weights {weights}: no such file")
    return ModelSpec(
        name=name,
        arch=arch,
        pretrained=tag,
        weights=Path(weights).resolve() if weights is not None else None,
        random_init=random_init,
        seed=seed,
    )


def pretrained_tags(arch: str) -> list[str]:
    return [t for a, t in _open_clip().list_pretrained() if a == arch]


def cached_checkpoint(arch: str, tag: str) -> Path | None:
    """The local file for an open_clip pretrained tag, if a previous download left it in a cache."""
    oc = _open_clip()
    cfg = oc.get_pretrained_cfg(arch, tag)
    if cfg.get("file"):
        return Path(cfg["file"]) if Path(cfg["file"]).exists() else None
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - huggingface_hub ships with open_clip
            try_to_load_from_cache = None
        if try_to_load_from_cache is not None:
            model_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
            for candidate in [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]:
                found = try_to_load_from_cache(model_id, candidate)
                if isinstance(found, str):
                    return Path(found)
    url = cfg.get("url", "")
    if url:
        local = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if local.exists():
            return local
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_checkpoint(arch: str, tag: str) -> Path:
    cached = cached_checkpoint(arch, tag)
    if cached is not None:
        return cached
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise WeightsError(
            f"the weights for {arch}:{tag} are not in the local cache and the model hub cannot be reached "
            f"(offline?); {OFFLINE_HINT}"
        )
    oc = _open_clip()
    try:
        return Path(oc.pretrained.download_pretrained(oc.get_pretrained_cfg(arch, tag)))
    except Exception as exc:  # network and hub errors come in many types
        raise WeightsError(f"could not download the weights for {arch}:{tag}: {exc}; {OFFLINE_HINT}") from None


def open_clip_tokenizer(arch: str) -> Any:
    """open_clip's tokenizer for `arch`. Some architectures (SigLIP, multilingual ones) name a
    Hugging Face tokenizer that open_clip fetches from the hub even with random weights; offline,
    only a cached copy is tried (no retry loop against an unreachable hub) and a miss is one error."""
    oc = _open_clip()
    hf_name = ((oc.get_model_config(arch) or {}).get("text_cfg") or {}).get("hf_tokenizer_name")
    if not hf_name:
        return oc.get_tokenizer(arch)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable()
    try:
        return oc.get_tokenizer(arch, local_files_only=True) if offline else oc.get_tokenizer(arch)
    except Exception as exc:  # transformers and the hub raise many types
        where = "is not in the local Hugging Face cache and the hub cannot be reached (offline?)" if offline else f"could not be loaded: {str(exc).splitlines()[0]}"
        raise WeightsError(f"{arch} tokenizes with the Hugging Face tokenizer {hf_name!r}, which {where}; captions cannot be tokenized for the text tower without it") from None


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in archive.namelist())


def read_state_dict(path: Path) -> tuple[dict[str, Any], bool]:
    """Load tensors without running pickled code; returns (state_dict, is_openai_jit)."""
    import torch

    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise WeightsError(f"{path} cannot be read: {exc.strerror or exc}") from None
    if size == 0:
        raise WeightsError(f"{path} is empty (0 bytes); expected a checkpoint (.pt, .bin or .safetensors)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path))), False
        except Exception as exc:
            raise WeightsError(f"{path} is not a readable safetensors file: {_reason(exc)}") from None
    if _is_torchscript_archive(path):
        # TorchScript archives are read by TorchScript's own loader, which builds no Python objects.
        try:
            return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), True
        except Exception as exc:
            raise WeightsError(f"{path} looks like a TorchScript archive but could not be read: {_reason(exc)}") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if "Unsupported global" in str(exc):  # a class or function to import and run: code, not tensors
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it needs arbitrary pickle code execution to unpickle; "
                "save it as a plain state dict (torch.save(model.state_dict())) or as .safetensors"
            ) from None
        raise WeightsError(f"{path} is not a readable checkpoint: {_reason(exc)}") from None
    if isinstance(data, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in data and isinstance(data[key], dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not data:
        raise WeightsError(f"{path} does not hold a state dict")
    state = {k.removeprefix("module."): v for k, v in data.items()}
    return state, False


def _reason(exc: BaseException) -> str:
    """The exception's own words: for torch's weights-only unpickler the line that says what it
    met (not its advice to disable the check), else the first line, with the type when the words
    alone say nothing (an EOFError is blank, a KeyError only the key)."""
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if detail:
        return f"not a torch checkpoint ({detail.group(1).strip()})"
    lines = text.strip().splitlines()
    if not lines or isinstance(exc, (KeyError, EOFError)):
        return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return lines[0]


def refuse_non_finite(state: dict[str, Any], where: Path) -> None:
    """NaN or Inf weights would only show up as a failed parity check after the whole export."""
    import torch

    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise WeightsError(f"the checkpoint {where} holds NaN or Inf values in {len(bad)} tensor(s): {shown}")


def _apply_state_dict(model: Any, state: dict[str, Any], where: str, arch: str) -> None:
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        parts = []
        if mismatched:
            k = mismatched[0]
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})")
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise WeightsError(f"the checkpoint {where} does not match the architecture {arch}: " + "; ".join(parts))
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) if torch.is_floating_point(v) else v for k, v in state.items()})


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model in fp32 on CPU, the reference every artifact is compared with."""
    if spec.hf_dir is not None:
        return _load_hf(spec)
    import torch

    oc = _open_clip()
    pcfg = oc.get_pretrained_cfg(spec.arch, spec.pretrained) if spec.pretrained else {}
    checkpoint: Path | None = None
    if spec.pretrained:
        checkpoint = _download_checkpoint(spec.arch, spec.pretrained)
    elif spec.weights is not None:
        checkpoint = spec.weights
    state: dict[str, Any] | None = None
    is_jit = False
    if checkpoint is not None:
        state, is_jit = read_state_dict(checkpoint)
        refuse_non_finite(state, checkpoint)
    if spec.random_init:
        torch.manual_seed(spec.seed)
    try:
        if is_jit:
            from open_clip.model import build_model_from_openai_state_dict

            model = build_model_from_openai_state_dict(state)
            state = None
        else:
            model = oc.create_model(spec.arch, pretrained=None, force_quick_gelu=bool(pcfg.get("quick_gelu")))
    except (KeyError, RuntimeError, ValueError) as exc:
        raise WeightsError(f"could not build {spec.arch} from {spec.source}: {exc}") from None
    if state is not None:
        _apply_state_dict(model, state, str(checkpoint), spec.arch)
    model = model.float().eval()

    base_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    for key in ("mean", "std", "interpolation", "resize_mode"):
        if pcfg.get(key) is not None:
            base_cfg[key] = pcfg[key]
    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    preprocess = PreprocessConfig(
        image_size=size,  # type: ignore[arg-type]
        mean=tuple(base_cfg.get("mean", OPENAI_MEAN)),  # type: ignore[arg-type]
        std=tuple(base_cfg.get("std", OPENAI_STD)),  # type: ignore[arg-type]
        interpolation=base_cfg.get("interpolation", "bicubic"),
        resize_mode=base_cfg.get("resize_mode", "shortest"),
    )
    tokenizer = open_clip_tokenizer(spec.arch if not is_jit else "ViT-B-32")
    context_length = int(getattr(model, "context_length", 77))
    tokenizer_cfg = TokenizerConfig(
        context_length=context_length,
        sot_token_id=int(getattr(tokenizer, "sot_token_id", 49406)),
        eot_token_id=int(getattr(tokenizer, "eot_token_id", 49407)),
    )

    def tokenize(texts: Sequence[str]) -> Any:
        return tokenizer(list(texts), context_length=context_length)

    with torch.no_grad():
        embed_dim = int(model.encode_text(tokenize(["a"])).shape[-1])
    return LoadedModel(
        spec=spec,
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer_cfg,
        tokenize=tokenize,
        embed_dim=embed_dim,
        checkpoint_sha256=sha256_file(checkpoint) if checkpoint is not None else None,
        checkpoint_path=checkpoint,
        extra={"open_clip_tokenizer": tokenizer},
    )


def _load_hf(spec: ModelSpec) -> LoadedModel:
    transformers = import_optional("transformers", package="transformers", extra="hf", purpose="loading a Hugging Face CLIP directory")
    import torch

    assert spec.hf_dir is not None
    try:
        model = transformers.CLIPModel.from_pretrained(str(spec.hf_dir), local_files_only=True, torch_dtype=torch.float32)
        tokenizer = transformers.CLIPTokenizer.from_pretrained(str(spec.hf_dir), local_files_only=True)
    except Exception as exc:
        raise WeightsError(f"could not load the Hugging Face CLIP directory {spec.hf_dir}: {exc}") from None
    model = _hf_adapter_class()(model).eval()
    pre = {}
    pre_file = spec.hf_dir / "preprocessor_config.json"
    if pre_file.exists():
        pre = json.loads(pre_file.read_text())
    crop = pre.get("crop_size", model.hf.config.vision_config.image_size)
    crop = (crop["height"], crop["width"]) if isinstance(crop, dict) else (int(crop), int(crop))
    preprocess = PreprocessConfig(
        image_size=crop,
        mean=tuple(pre.get("image_mean", OPENAI_MEAN)),  # type: ignore[arg-type]
        std=tuple(pre.get("image_std", OPENAI_STD)),  # type: ignore[arg-type]
    )
    context_length = int(model.hf.config.text_config.max_position_embeddings)

    def tokenize(texts: Sequence[str]) -> Any:
        return tokenizer(list(texts), padding="max_length", truncation=True, max_length=context_length, return_tensors="pt")["input_ids"]

    weight_files = sorted(spec.hf_dir.glob("*.safetensors")) or sorted(spec.hf_dir.glob("*.bin"))
    with torch.no_grad():
        embed_dim = int(model.encode_text(tokenize(["a"])).shape[-1])
    return LoadedModel(
        spec=spec,
        model=model,
        preprocess=preprocess,
        tokenizer=TokenizerConfig(context_length, int(tokenizer.bos_token_id), int(tokenizer.eos_token_id), kind="huggingface"),
        tokenize=tokenize,
        embed_dim=embed_dim,
        checkpoint_sha256=sha256_file(weight_files[0]) if weight_files else None,
        checkpoint_path=weight_files[0] if weight_files else None,
    )


@lru_cache(maxsize=1)
def _hf_adapter_class() -> type:
    """Built on first use: subclassing torch.nn.Module at import time would import torch with
    every clip_export module, including the torch-free serving runtime."""
    import torch

    class HFAdapter(torch.nn.Module):
        """Gives a transformers CLIPModel the encode_image/encode_text surface of open_clip."""

        def __init__(self, hf_model: Any) -> None:
            super().__init__()
            self.hf = hf_model

        def encode_image(self, pixel_values: Any, normalize: bool = False) -> Any:
            out = self.hf.get_image_features(pixel_values=pixel_values)
            out = getattr(out, "pooler_output", out)
            return out / out.norm(dim=-1, keepdim=True) if normalize else out

        def encode_text(self, input_ids: Any, normalize: bool = False) -> Any:
            out = self.hf.get_text_features(input_ids=input_ids)
            out = getattr(out, "pooler_output", out)
            return out / out.norm(dim=-1, keepdim=True) if normalize else out

    return HFAdapter


@dataclass(frozen=True)
class ModelListing:
    name: str
    arch: str
    tags: tuple[str, ...]
    cached_tags: tuple[str, ...]


def list_models(include_archs: bool = True) -> list[ModelListing]:
    """Every name `onnx` accepts, and which pretrained tags are already in a local cache."""
    pretrained = _open_clip().list_pretrained()
    by_arch: dict[str, list[str]] = {}
    for arch, tag in pretrained:
        by_arch.setdefault(arch, []).append(tag)
    rows = []
    for name, arch in OPENAI_NAMES.items():
        rows.append(ModelListing(name, arch, ("openai",), tuple(t for t in ("openai",) if cached_checkpoint(arch, t))))
    if include_archs:
        for arch in known_architectures():
            tags = tuple(by_arch.get(arch, ()))
            rows.append(ModelListing(arch, arch, tags, tuple(t for t in tags if cached_checkpoint(arch, t))))
    return rows


def spec_from_manifest(model: dict[str, Any], verify_checkpoint: bool = True) -> ModelSpec:
    """Rebuild the ModelSpec an artifact directory was exported from, checking the checkpoint hash."""
    checkpoint = model.get("checkpoint")
    if verify_checkpoint and checkpoint and model.get("checkpoint_sha256") and not model.get("pretrained"):
        path = Path(checkpoint)
        if not path.exists():
            raise WeightsError(f"the checkpoint {path} recorded in the manifest is gone")
        if sha256_file(path) != model["checkpoint_sha256"]:
            raise WeightsError(f"the checkpoint {path} no longer matches the sha256 in the manifest")
    if str(model.get("source", "")).startswith("huggingface:"):
        return resolve(str(model["source"]).split(":", 1)[1])
    name = f"{model['arch']}:{model['pretrained']}" if model.get("pretrained") else model["arch"]
    spec = resolve(
        name,
        weights=None if model.get("pretrained") or model.get("random_init") else checkpoint,
        random_init=bool(model.get("random_init")),
        seed=int(model.get("seed") or 0),
    )
    return ModelSpec(model.get("name", spec.name), spec.arch, spec.pretrained, spec.weights, spec.random_init, spec.seed, spec.hf_dir)
