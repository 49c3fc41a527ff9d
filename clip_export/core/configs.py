"""The preprocessing and tokenizer settings an export records: plain data, torch-free, so the
serving runtime reads them without importing the model loaders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_export.core.errors import ClipExportError

# What the reference and runtime preprocessing implement, each bit-exact to open_clip's
# torchvision transform: Resize(short side) + CenterCrop, and Resize((H, W)) with no crop.
RESIZE_MODES = ("shortest", "squash")


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
    def from_json(cls, data: dict[str, Any]) -> PreprocessConfig:
        return cls(
            image_size=tuple(data["image_size"]),  # type: ignore[arg-type]
            mean=tuple(data["mean"]),  # type: ignore[arg-type]
            std=tuple(data["std"]),  # type: ignore[arg-type]
            interpolation=data.get("interpolation", "bicubic"),
            resize_mode=data.get("resize_mode", "shortest"),
        )


def require_resize_mode(resize_mode: str, where: str) -> None:
    """A resize mode we do not implement is refused by name, never approximated."""
    if resize_mode not in RESIZE_MODES:
        raise ClipExportError(
            f"{where} asks for resize_mode {resize_mode!r}; clip-export implements {', '.join(RESIZE_MODES)}"
        )


@dataclass(frozen=True)
class TokenizerConfig:
    """How captions become ids: recorded in the manifest, read by the runtime."""

    context_length: int
    sot_token_id: int | None
    eot_token_id: int | None
    kind: str = "clip-bpe"  # "clip-bpe" (open_clip's SimpleTokenizer), "hf" (open_clip's HFTokenizer), "huggingface" (a CLIP directory)
    pad_token_id: int = 0
    vocab_size: int | None = None
    clean: str = "lower"  # open_clip's clean function applied before the ids: lower, whitespace, canonicalize; none
    language: str | None = None  # the source-language code every caption starts with (NLLB); None where ids carry none

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


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
    tokenizer_dir: Path | None = None  # --tokenizer DIR: a local tokenizer.json instead of the hub's
    text_config_dir: Path | None = None  # --text-config DIR: a local transformers config for an HF text tower

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
class LocalSources:
    """The local files a torch rebuild of an export reads (verify --reference torch, bench), named by
    the user with --weights, --tokenizer and --text-config: never by a path a manifest holds."""

    weights: Path | None = None
    tokenizer: Path | None = None
    text_config: Path | None = None

    @classmethod
    def of(cls, spec: ModelSpec) -> LocalSources:
        """What the pipeline's own export read, for its verify and bench."""
        return cls(spec.hf_dir or spec.weights, spec.tokenizer_dir, spec.text_config_dir)


NO_LOCAL_SOURCES = LocalSources()  # pretrained tags and seeded random inits rebuild from nothing local


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
    family: str = "clip"
    reparameterized_modules: int = 0

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
            "family": self.family,
            "reparameterized_modules": self.reparameterized_modules,
            "tokenizer_dir": str(self.spec.tokenizer_dir) if self.spec.tokenizer_dir else None,
            "text_config_dir": str(self.spec.text_config_dir) if self.spec.text_config_dir else None,
        }
