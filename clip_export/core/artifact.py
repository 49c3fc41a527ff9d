"""The manifest as typed values: each artifact, its files and tensors, every verification row and the
settings sections (core/sections.py; preprocess as configs.PreprocessConfig) are frozen records read by
attribute everywhere. The JSON form (`to_json`) is the on-disk contract other tools read, kept whole:
`Manifest.from_json(m).to_json() == m`; a section as written is `section(name)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from clip_export.core.configs import PreprocessConfig
from clip_export.core.sections import (
    BenchmarkSection,
    JsonRecord,
    ModelSection,
    ReferenceSection,
    TokenizerSection,
    VerificationRun,
    require_keys,
)

# What every artifact entry must name; the rest describes how it was made.
ARTIFACT_KEYS = ("path", "sha256", "bytes", "tower", "precision", "format")
FILE_KEYS = ("path", "sha256", "bytes")


# Files a manifest section (not an artifact entry) names and hashes: the export's stored reference and the
# tokenizer files the serving tokenizer reads. Manifest.section_file reads them; release copies them.
SECTION_FILES = ("reference", "tokenizer.file", "tokenizer.bpe_vocab")


@dataclass(frozen=True)
class FileRecord:
    """One file on disk as hashed when it was written."""

    path: str
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "bytes": self.bytes}

    @classmethod
    def from_json(cls, data: Any, where: str) -> FileRecord:
        require_keys(data, FILE_KEYS, where)
        return cls(path=data["path"], sha256=data["sha256"], bytes=data["bytes"])


@dataclass(frozen=True)
class TensorRecord:
    """A graph input or output: its name, element type and shape (symbolic axes as names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> TensorRecord:
        require_keys(data, ("name", "dtype", "shape"), where)
        return cls(name=data["name"], dtype=data["dtype"], shape=tuple(data["shape"]))


Tensors = tuple[TensorRecord, ...]


def declared_io(declaration: Mapping[str, Any], where: str) -> tuple[Tensors, Tensors]:
    """(inputs, outputs) as records from an IO declaration in its JSON form ({"inputs": [...], "outputs":
    [...]}), the form spec and the model loader declare it in."""
    inputs, outputs = (
        tuple(TensorRecord.from_json(t, f"{where} {side[:-1]}") for t in declaration[side])
        for side in ("inputs", "outputs")
    )
    return inputs, outputs


@dataclass(frozen=True)
class ArtifactEntry:
    path: str
    sha256: str
    bytes: int
    tower: str
    precision: str
    format: str
    inputs: tuple[TensorRecord, ...] = ()
    outputs: tuple[TensorRecord, ...] = ()
    opset: int | None = None
    external_data: tuple[FileRecord, ...] = ()
    derived_from: Mapping[str, str] | None = None
    # What the stage that made it records (export_parity, conversion, tensorrt, …), kept as written.
    details: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of_file(cls, record: FileRecord, **fields: Any) -> ArtifactEntry:
        """The entry for a file a stage has just written and hashed."""
        return cls(record.path, record.sha256, record.bytes, **fields)

    @property
    def files(self) -> tuple[FileRecord, ...]:
        """The graph file and every external-data file it needs: what integrity hashes and release copies."""
        return (FileRecord(self.path, self.sha256, self.bytes), *self.external_data)

    def detail(self, key: str, default: Any = None) -> Any:
        """What the making stage recorded under `key` (conversion, export_parity, tensorrt, …)."""
        return self.details.get(key, default)

    def with_details(self, **values: Any) -> ArtifactEntry:
        """The same artifact with these stage records added or replaced."""
        return dataclasses.replace(self, details={**self.details, **values})

    def moved(self, record: FileRecord, external_data: tuple[FileRecord, ...]) -> ArtifactEntry:
        """The same artifact after its files were renamed into place (a new path and file records)."""
        return dataclasses.replace(
            self, path=record.path, sha256=record.sha256, bytes=record.bytes, external_data=external_data
        )

    def matches(self, **match: str | Collection[str] | None) -> bool:
        """Each named field equals the given value, or is one of a given tuple, list or set of values."""

        def one(key: str, wanted: Any) -> bool:
            value = getattr(self, key) if key in _OWN_FIELDS else self.details.get(key)
            return value in wanted if isinstance(wanted, (tuple, list, set, frozenset)) else value == wanted

        return all(one(k, v) for k, v in match.items())

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "path": self.path,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "tower": self.tower,
            "precision": self.precision,
            "format": self.format,
        }
        if self.opset is not None:
            data["opset"] = self.opset
        data.update(
            inputs=[t.to_json() for t in self.inputs],
            outputs=[t.to_json() for t in self.outputs],
            external_data=[r.to_json() for r in self.external_data],
            derived_from=dict(self.derived_from) if self.derived_from is not None else None,
        )
        return {**data, **self.details}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ArtifactEntry:
        """ManifestError naming the entry and every key it lacks."""
        require_keys(data, ARTIFACT_KEYS, where)
        values = {k: v for k, v in data.items() if k in _OWN_FIELDS}
        for key, kind in (("inputs", TensorRecord), ("outputs", TensorRecord), ("external_data", FileRecord)):
            values[key] = tuple(
                kind.from_json(item, f"{where}.{key}[{i}]") for i, item in enumerate(data.get(key) or ())
            )
        return cls(**values, details={k: v for k, v in data.items() if k not in _OWN_FIELDS})


_OWN_FIELDS = frozenset(f.name for f in dataclasses.fields(ArtifactEntry)) - {"details"}


class VerificationRow(JsonRecord):
    """One verdict as `verify` wrote it: typed reads for what release, the card and the serve-time check
    decide on. The row is kept whole so rows of other versions read and write back unchanged; it
    changes only through `moved`."""

    REQUIRED = ("path", "status")
    WHERE = "a verification row"

    @property
    def path(self) -> str:
        return str(self.fields["path"])

    @property
    def status(self) -> str:
        return str(self.fields["status"])

    @property
    def sha256(self) -> str | None:
        return self.fields.get("sha256")

    @property
    def format(self) -> str | None:
        return self.fields.get("format")

    @property
    def provider_requested(self) -> str | None:
        return self.fields.get("provider_requested")

    @property
    def provider_ran(self) -> str | None:
        """None where the provider never ran here (its row has no numbers and no verdict on them)."""
        return self.fields.get("provider_ran")

    @property
    def metrics(self) -> Mapping[str, float]:
        return self.fields.get("metrics") or {}

    @property
    def environment(self) -> dict[str, Any] | None:
        """The Environment record the verdict holds for (Environment.from_json); None on legacy rows."""
        env = self.fields.get("environment")
        return env if isinstance(env, dict) else None

    @property
    def environment_key(self) -> str | None:
        return (self.environment or {}).get("key")

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(self.fields.get("failures") or ())

    @property
    def settings_sha256(self) -> str | None:
        return self.fields.get("settings_sha256")

    @property
    def date(self) -> str | None:
        return self.fields.get("date")

    def moved(self, path: str, sha256: str | None = None) -> VerificationRow:
        """The same verdict for its file under a new name (release renames assets), same key order."""
        changes = {"path": path, **({"sha256": sha256} if sha256 is not None else {})}
        return VerificationRow(MappingProxyType({k: changes.get(k, v) for k, v in self.fields.items()}))


@dataclass
class Manifest:
    """manifest.json's top level. Artifacts are typed and change only through `upsert`/`replace_artifacts`;
    every other section keeps its place and JSON form, so a manifest read and written back is byte-identical."""

    artifacts: list[ArtifactEntry]
    sections: dict[str, Any]  # every key but "artifacts", in file order; "artifacts" keeps its slot as a marker

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> Manifest:
        artifacts = [ArtifactEntry.from_json(e, f"{where}: artifacts[{i}]") for i, e in enumerate(data["artifacts"])]
        return cls(artifacts=artifacts, sections={k: (None if k == "artifacts" else v) for k, v in data.items()})

    def to_json(self) -> dict[str, Any]:
        data = {k: ([a.to_json() for a in self.artifacts] if k == "artifacts" else v) for k, v in self.sections.items()}
        if "artifacts" not in data:
            data["artifacts"] = [a.to_json() for a in self.artifacts]
        return data

    # The sections every reader relies on (read_manifest refuses a manifest without them), typed; the JSON
    # as written is `section(name)`, and a new value is written with `set_section`.
    @property
    def model(self) -> ModelSection:
        return ModelSection.from_json(self.sections["model"])

    @property
    def preprocess(self) -> PreprocessConfig:
        return PreprocessConfig.from_json(self.sections["preprocess"])

    @property
    def tokenizer(self) -> TokenizerSection:
        return TokenizerSection.from_json(self.sections["tokenizer"])

    @property
    def normalize(self) -> bool:
        return bool(self.sections.get("normalize"))

    @property
    def reference(self) -> ReferenceSection | None:
        record = self.sections.get("reference")
        return ReferenceSection.from_json(record) if record else None

    @property
    def benchmark(self) -> BenchmarkSection | None:
        """The last `clip-export bench` run, where there was one."""
        record = self.sections.get("benchmark")
        return BenchmarkSection.from_json(record) if record else None

    @property
    def verification(self) -> VerificationRun | None:
        """When and with what the last `verify` ran; its verdicts are `verification_rows`."""
        record = self.sections.get("verification")
        return VerificationRun.from_json(record) if record else None

    @property
    def int8_not_built(self) -> Mapping[str, str]:
        """Tower → why `int8` built no INT8 artifact for it (convert writes it, the card explains it)."""
        return MappingProxyType(dict(self.sections.get("int8_not_built") or {}))

    def section_file(self, key: str, where: str) -> FileRecord | None:
        """One of SECTION_FILES ("reference", "tokenizer.file", …) as the FileRecord it was hashed as, or
        None where this manifest has no such file; a malformed record is a ManifestError naming `where`."""
        if key not in SECTION_FILES:
            raise ValueError(f"{key!r} is not one of {', '.join(SECTION_FILES)}")
        section, _, field = key.partition(".")
        holder = self.sections.get(section) or {}
        record = holder.get(field) if field else holder
        return FileRecord.from_json(record, f"{where}: {key}") if record else None

    def move_section_file(self, key: str, record: FileRecord) -> None:
        """The section file `key` now lies at `record` (release renames it): its path, sha256 and size
        change in place in the section's JSON, every other field of the section stays."""
        if self.section_file(key, "the manifest") is None:
            raise ValueError(f"this manifest has no {key} to move")
        section, _, field_name = key.partition(".")
        holder = dict(self.sections[section])
        if field_name:
            holder[field_name] = {**holder[field_name], **record.to_json()}
        else:
            holder.update(record.to_json())
        self.sections[section] = holder

    @property
    def verification_rows(self) -> tuple[VerificationRow, ...]:
        results = (self.sections.get("verification") or {}).get("results", [])
        return tuple(VerificationRow.from_json(r, f"verification.results[{i}]") for i, r in enumerate(results))

    def replace_verification_rows(self, rows: Collection[VerificationRow]) -> None:
        """The verification section with these rows; its other fields (date, versions, …) stay."""
        self.sections["verification"] = {
            **(self.sections.get("verification") or {}),
            "results": [r.to_json() for r in rows],
        }

    def section(self, name: str, default: Any = None) -> Any:
        """A section later stages add (verification, benchmark, int8_not_built, hf_layout, …), as written."""
        return self.sections.get(name, default)

    def set_section(self, name: str, value: Any) -> None:
        if name == "artifacts":
            raise ValueError("artifacts change through upsert or replace_artifacts")
        self.sections[name] = value

    def drop_section(self, name: str) -> None:
        self.sections.pop(name, None)

    def select(self, **match: str | Collection[str] | None) -> list[ArtifactEntry]:
        """The artifacts whose fields equal each given value (or are one of a given collection): the
        one place stages filter the artifact list."""
        return [entry for entry in self.artifacts if entry.matches(**match)]

    def find(self, **match: str | Collection[str] | None) -> ArtifactEntry | None:
        """The first artifact `select` would return, or None."""
        found = self.select(**match)
        return found[0] if found else None

    def upsert(self, entry: ArtifactEntry) -> None:
        """Add `entry`, replacing the artifact at the same path."""
        self.artifacts = [a for a in self.artifacts if a.path != entry.path] + [entry]

    def replace_artifacts(self, entries: list[ArtifactEntry]) -> None:
        self.artifacts = list(entries)
