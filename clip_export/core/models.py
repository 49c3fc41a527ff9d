"""Model spec and loading: names users type, where weights come from, and how they load safely."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.checkpoints import apply_state_dict, read_state_dict, refuse_non_finite, sha256_file
from clip_export.core.configs import (
    NO_LOCAL_SOURCES,
    LoadedModel,
    LocalSources,
    ModelSpec,
    PreprocessConfig,
    TokenizerConfig,
    require_resize_mode,
)
from clip_export.core.errors import UnknownModelError, WeightsError, import_optional
from clip_export.core.families import (
    OPENAI_MEAN,
    OPENAI_STD,
    FamilyRules,
    check_text_config_dir,
    check_tokenizer_dir,
    family_for,
    preprocess_settings,
)
from clip_export.core.hf import load_hf_dir
from clip_export.core.tokenizer_setup import (
    finish_loading,
    hub_reachable,
    reference_tokenizer,
    require_fits_model,
    tokenizer_settings,
)

__all__ = [
    "LoadedModel",
    "ModelSpec",
    "PreprocessConfig",
    "TokenizerConfig",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "load_model",
    "resolve",
    "sha256_file",
]

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
OFFLINE_HINT = "pass --weights PATH for a local checkpoint, or --random-init for seeded random weights"


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
    tokenizer: str | Path | None = None,
    text_config: str | Path | None = None,
) -> ModelSpec:
    """Turn what the user typed into a ModelSpec, or say what exists instead; the offline
    directories (--tokenizer, --text-config) and the family's rules are checked here, before
    anything is built or written."""
    chosen = [x for x in (pretrained, weights, random_init or None) if x]
    if len(chosen) > 1:
        raise WeightsError("choose one weights source: --pretrained TAG, --weights PATH or --random-init")
    candidate_dir = Path(name)
    if candidate_dir.is_dir() and (candidate_dir / "config.json").exists():
        return ModelSpec(name=candidate_dir.name, arch="hf-clip", hf_dir=candidate_dir.resolve())
    if weights is not None and Path(weights).is_dir():
        if not (Path(weights) / "config.json").exists():
            raise WeightsError(
                f"--weights {weights} is a directory without config.json; expected a Hugging Face CLIP directory"
            )
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
    cfg = model_config(arch)
    family = family_for(arch, cfg)
    spec = ModelSpec(
        name=name,
        arch=arch,
        pretrained=tag,
        weights=Path(weights).resolve() if weights is not None else None,
        random_init=random_init,
        seed=seed,
        tokenizer_dir=check_tokenizer_dir(Path(tokenizer), arch, family) if tokenizer is not None else None,
        text_config_dir=check_text_config_dir(Path(text_config), arch, cfg, family)
        if text_config is not None
        else None,
    )
    preflight(spec)
    return spec


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


def _download_checkpoint(arch: str, tag: str) -> Path:
    cached = cached_checkpoint(arch, tag)
    if cached is not None:
        return cached
    if not hub_reachable():
        raise WeightsError(
            f"the weights for {arch}:{tag} are not in the local cache and the model hub cannot be reached "
            f"(offline?); {OFFLINE_HINT}"
        )
    oc = _open_clip()
    try:
        return Path(oc.pretrained.download_pretrained(oc.get_pretrained_cfg(arch, tag)))
    except Exception as exc:  # network and hub errors come in many types
        raise WeightsError(f"could not download the weights for {arch}:{tag}: {exc}; {OFFLINE_HINT}") from exc


def model_config(arch: str) -> dict[str, Any]:
    return dict(_open_clip().get_model_config(arch) or {})


def tag_config(arch: str, tag: str | None) -> dict[str, Any]:
    """The pretrained tag's config; for random or local weights the architecture's first tag's,
    whose preprocessing is what the weights users load with it expect."""
    tags = pretrained_tags(arch)
    chosen = tag or (tags[0] if tags else None)
    return dict(_open_clip().get_pretrained_cfg(arch, chosen) or {}) if chosen else {}


def preflight(spec: ModelSpec) -> tuple[FamilyRules, dict[str, Any], dict[str, Any]]:
    """Everything that can be refused from configs alone (family, resize mode, the extra a text
    tower needs), checked before a model is built or a file written."""
    cfg = model_config(spec.arch)
    family = family_for(spec.arch, cfg)
    settings = preprocess_settings(family, cfg, tag_config(spec.arch, spec.pretrained))
    require_resize_mode(settings["resize_mode"], f"{spec.arch}'s preprocessing")
    if family.needs_transformers:
        import_optional(
            "transformers", package="transformers", extra="hf", purpose=f"{spec.arch}'s Hugging Face text tower"
        )
    return family, cfg, settings


def _build(oc: Any, spec: ModelSpec, cfg: dict[str, Any], family: FamilyRules, quick_gelu: bool) -> Any:
    """open_clip's model; HF text towers from --text-config DIR and never from the hub's weights
    (the checkpoint, or the seeded random init, supplies them)."""
    kwargs: dict[str, Any] = {}
    if family.needs_transformers:
        text_cfg = dict(cfg.get("text_cfg") or {})
        if spec.text_config_dir is not None:
            text_cfg["hf_model_name"] = str(spec.text_config_dir)
        elif not hub_reachable():
            from transformers import AutoConfig

            try:
                AutoConfig.from_pretrained(text_cfg["hf_model_name"], local_files_only=True)
            except Exception as exc:
                raise WeightsError(
                    f"{spec.arch}'s text tower is the transformers model {text_cfg['hf_model_name']!r}, whose "
                    "config is not in the local Hugging Face cache and the hub cannot be reached (offline?); "
                    "pass --text-config DIR, a directory holding its config.json"
                ) from exc
        kwargs = {"text_cfg": {**text_cfg, "hf_model_pretrained": False}, "pretrained_hf": False}
    try:
        return oc.create_model(spec.arch, pretrained=None, force_quick_gelu=quick_gelu, **kwargs)
    except (KeyError, RuntimeError, ValueError, OSError) as exc:
        raise WeightsError(f"could not build {spec.arch} from {spec.source}: {str(exc).splitlines()[0]}") from exc


def _text_vocabulary(model: Any) -> tuple[int | None, int | None]:
    """(embedding rows, padding id the tower masks) of the text tower, where it says."""
    text = getattr(model, "text", None)
    config = getattr(text, "config", None)
    if config is not None:
        return int(config.vocab_size), config.pad_token_id
    embedding = getattr(text if text is not None else model, "token_embedding", None)
    return (int(embedding.num_embeddings) if embedding is not None else None), None


def reparameterize(model: Any) -> int:
    """Fold MobileOne/FastViT train-time branches into one conv each (timm's reparameterize_model,
    what apple's export guide runs); returns how many modules were folded."""
    from timm.utils.model import reparameterize_model

    count = sum(1 for m in model.modules() if hasattr(m, "reparameterize"))
    reparameterize_model(model, inplace=True)
    return count


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model in fp32 on CPU, the reference every artifact is compared with."""
    if spec.hf_dir is not None:
        return load_hf_dir(spec)
    import torch

    family, cfg, settings = preflight(spec)
    oc = _open_clip()
    reference = reference_tokenizer(oc, spec.arch, cfg, family, spec.tokenizer_dir)
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
    if is_jit:
        from open_clip.model import build_model_from_openai_state_dict

        try:
            model = build_model_from_openai_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise WeightsError(f"could not build {spec.arch} from {spec.source}: {exc}") from exc
        state, reference, family = None, oc.get_tokenizer("ViT-B-32"), family_for("ViT-B-32", {})
    else:
        model = _build(oc, spec, cfg, family, bool(pcfg.get("quick_gelu")))
    if state is not None:
        apply_state_dict(model, state, str(checkpoint), spec.arch)
    model = model.float().eval()
    folded = reparameterize(model) if family.reparameterize else 0

    size = model.visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    preprocess = PreprocessConfig(
        size, tuple(settings["mean"]), tuple(settings["std"]), settings["interpolation"], settings["resize_mode"]
    )  # type: ignore[arg-type]
    context_length = int(getattr(reference, "context_length", None) or getattr(model, "context_length", 77))
    tokenizer_cfg = tokenizer_settings(oc, reference, family, context_length)
    where = f"--tokenizer {spec.tokenizer_dir}" if spec.tokenizer_dir else f"the tokenizer of {spec.arch}"
    require_fits_model(tokenizer_cfg, spec.arch, *_text_vocabulary(model), where)

    def tokenize(texts: Sequence[str], length: int = context_length) -> Any:
        return reference(list(texts), context_length=length)

    backend = reference.tokenizer.backend_tokenizer if tokenizer_cfg.kind == "hf" else None
    return finish_loading(
        spec,
        model,
        preprocess,
        tokenizer_cfg,
        tokenize,
        backend,
        checkpoint,
        extra={"open_clip_tokenizer": reference},
        family=family.name,
        reparameterized_modules=folded,
    )


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


def spec_from_manifest(model: dict[str, Any], sources: LocalSources = NO_LOCAL_SOURCES) -> ModelSpec:
    """Rebuild the ModelSpec an artifact directory was exported from. No path the manifest names is
    ever read: a local checkpoint (or Hugging Face directory) comes from the caller's --weights, checked
    against the sha256 the manifest records, a local tokenizer or text config from --tokenizer and
    --text-config; pretrained tags and seeded random inits rebuild without them."""
    hf = str(model.get("source", "")).startswith("huggingface:")
    local = hf or not (model.get("pretrained") or model.get("random_init"))
    name = model.get("name") or model.get("arch")
    weights = sources.weights
    for key, given, flag in (
        ("tokenizer_dir", sources.tokenizer, "--tokenizer"),
        ("text_config_dir", sources.text_config, "--text-config"),
    ):
        if model.get(key) and given is None:
            raise WeightsError(
                f"{name} was exported with {flag} DIR, which clip-export never reads from a manifest; "
                f"pass {flag} DIR (the same directory) to rebuild the torch model"
            )
        if given is not None and not model.get(key):
            raise WeightsError(f"{flag} {given}: {name} was exported without {flag}; rebuild it without")
    if not local:
        if weights is not None:
            raise WeightsError(f"--weights is only for an export from a local checkpoint; {name} rebuilds without it")
    elif weights is None:
        raise WeightsError(
            f"{name} was exported from a local checkpoint, which clip-export never reads from a manifest; "
            "pass --weights PATH (the same checkpoint) to rebuild the torch model"
        )
    elif hf:
        if not (Path(weights).is_dir() and (Path(weights) / "config.json").is_file()):
            raise WeightsError(f"--weights {weights}: {name} was exported from a Hugging Face CLIP directory; pass it")
        return dataclasses.replace(resolve(str(weights)), name=name)
    else:
        if not Path(weights).is_file():
            raise WeightsError(f"--weights {weights}: no such file")
        recorded = model.get("checkpoint_sha256")
        if recorded and sha256_file(Path(weights)) != recorded:
            raise WeightsError(
                f"--weights {weights} is not the checkpoint {name} was exported from (the manifest records "
                f"sha256 {recorded})"
            )
    spec = resolve(
        f"{model['arch']}:{model['pretrained']}" if model.get("pretrained") else model["arch"],
        weights=weights if local else None,
        random_init=bool(model.get("random_init")),
        seed=int(model.get("seed") or 0),
        tokenizer=sources.tokenizer,
        text_config=sources.text_config,
    )
    return dataclasses.replace(spec, name=model.get("name", spec.name))
