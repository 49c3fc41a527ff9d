"""The manifest's settings sections as typed, read-only values: what was exported (`model`), how captions
become ids (`tokenizer`) and the fp32 reference the verdicts compare with (`reference`); `preprocess`
reads as configs.PreprocessConfig. Each keeps its JSON whole (`fields`, in written order), so a manifest
read and written back is byte-identical and keys of other versions survive; stages read attributes,
and a stage that records something new writes a new section value through `Manifest.set_section`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from clip_export.core.errors import ManifestError


def require_keys(data: Any, keys: tuple[str, ...], where: str) -> None:
    """ManifestError naming the record and every key it lacks: how every manifest record is refused."""
    absent = [k for k in keys if not isinstance(data, dict) or k not in data]
    if absent:
        raise ManifestError(f"{where} has no {', '.join(absent)}")


def _frozen(data: Any, where: str, required: tuple[str, ...]) -> Mapping[str, Any]:
    require_keys(data, required, where)
    return MappingProxyType(dict(data))


R = TypeVar("R", bound="JsonRecord")


@dataclass(frozen=True)
class JsonRecord:
    """A manifest record kept whole (`fields`, read-only, in written order) with typed reads on top:
    subclasses name the keys they cannot do without (REQUIRED) and what to call themselves in errors."""

    fields: Mapping[str, Any]
    REQUIRED: ClassVar[tuple[str, ...]] = ()
    WHERE: ClassVar[str] = "a manifest record"

    @classmethod
    def from_json(cls: type[R], data: Any, where: str | None = None) -> R:
        return cls(_frozen(data, where or cls.WHERE, cls.REQUIRED))

    def to_json(self) -> dict[str, Any]:
        return dict(self.fields)


class ModelSection(JsonRecord):
    """manifest["model"]: the architecture and weights source an export was made from (ModelSpec is
    rebuilt from it by models.spec_from_manifest, which never reads a path it names)."""

    REQUIRED = ("arch",)
    WHERE = "the manifest's model section"

    @property
    def arch(self) -> str:
        return str(self.fields["arch"])

    @property
    def name(self) -> str:
        return str(self.fields.get("name") or self.arch)

    @property
    def source(self) -> str | None:
        return self.fields.get("source")

    @property
    def pretrained(self) -> str | None:
        return self.fields.get("pretrained")

    @property
    def random_init(self) -> bool:
        return bool(self.fields.get("random_init"))

    @property
    def seed(self) -> int | None:
        return self.fields.get("seed")

    @property
    def checkpoint_sha256(self) -> str | None:
        return self.fields.get("checkpoint_sha256")

    @property
    def embed_dim(self) -> int | None:
        return self.fields.get("embed_dim")

    @property
    def family(self) -> str:
        return str(self.fields.get("family") or "clip")


class TokenizerSection(JsonRecord):
    """manifest["tokenizer"]: configs.TokenizerConfig as recorded, plus the files the serving tokenizer reads."""

    REQUIRED = ("context_length",)
    WHERE = "the manifest's tokenizer section"

    @property
    def context_length(self) -> int:
        return int(self.fields["context_length"])

    @property
    def kind(self) -> str | None:
        return self.fields.get("kind")

    @property
    def clean(self) -> str | None:
        return self.fields.get("clean")

    @property
    def sot_token_id(self) -> int | None:
        return self.fields.get("sot_token_id")

    @property
    def eot_token_id(self) -> int | None:
        return self.fields.get("eot_token_id")

    @property
    def pad_token_id(self) -> int:
        return int(self.fields.get("pad_token_id") or 0)

    @property
    def vocab_size(self) -> int | None:
        return self.fields.get("vocab_size")


class ReferenceSection(JsonRecord):
    """manifest["reference"]: the stored torch fp32 reference (its file record is Manifest.section_file)
    and which evaluation items it was computed on."""

    WHERE = "the manifest's reference section"

    @property
    def evalset(self) -> str | None:
        """ "bundled", or how --images/--texts replaced it; None in references written before it was recorded."""
        return self.fields.get("evalset")

    @property
    def captions(self) -> tuple[str, ...] | None:
        captions = self.fields.get("captions")
        return None if captions is None else tuple(str(c) for c in captions)

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(self.fields.get("images") or ())


@dataclass(frozen=True)
class MeasuredRow:
    """One row of `clip-export bench` as its section keeps it, as far as the model card reads it."""

    name: str
    kind: str  # "artifact" | "baseline"
    tower: str
    batch: int
    provider_ran: str | None
    p50_ms: float | None
    speedup_vs_torch: float | None

    @classmethod
    def from_json(cls, data: Any, where: str) -> MeasuredRow:
        row = _frozen(data, where, ("name", "batch"))
        latency = row.get("latency") or {}
        return cls(
            name=str(row["name"]),
            kind=str(row.get("kind") or "artifact"),
            tower=str(row.get("tower") or ""),
            batch=int(row["batch"]),
            provider_ran=row.get("provider_ran"),
            p50_ms=latency.get("p50_ms"),
            speedup_vs_torch=row.get("speedup_vs_torch"),
        )


class BenchmarkSection(JsonRecord):
    """manifest["benchmark"]: the last `clip-export bench` run (bench_rows.BenchResult as JSON), kept whole."""

    WHERE = "the manifest's benchmark section"

    @property
    def machine_cpu(self) -> str | None:
        return (self.fields.get("machine") or {}).get("cpu")

    @property
    def date(self) -> str:
        return str(self.fields.get("date") or "")

    @property
    def rows(self) -> tuple[MeasuredRow, ...]:
        return tuple(
            MeasuredRow.from_json(r, f"the benchmark section's rows[{i}]")
            for i, r in enumerate(self.fields.get("rows") or ())
        )


class VerificationRun(JsonRecord):
    """manifest["verification"] apart from its rows (Manifest.verification_rows): when and with which
    library versions the last `verify` ran, kept whole."""

    WHERE = "the manifest's verification section"

    @property
    def date(self) -> str | None:
        return self.fields.get("date")

    @property
    def machine(self) -> Any:
        return self.fields.get("machine")

    @property
    def versions(self) -> Mapping[str, str]:
        return MappingProxyType(dict(self.fields.get("versions") or {}))
