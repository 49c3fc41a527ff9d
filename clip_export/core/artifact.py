"""One artifact as the manifest records it: built in one place by every stage that makes one, and
read back with its keys checked. The JSON form (`to_json`) is the on-disk contract other tools read."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from clip_export.core.errors import ManifestError

# What every artifact entry must name; the rest describes how it was made.
ARTIFACT_KEYS = ("path", "sha256", "bytes", "tower", "precision", "format")
_SEQUENCES = ("inputs", "outputs", "external_data")


@dataclass(frozen=True)
class ArtifactEntry:
    path: str
    sha256: str
    bytes: int
    tower: str
    precision: str
    format: str
    inputs: tuple[dict[str, Any], ...] = ()
    outputs: tuple[dict[str, Any], ...] = ()
    opset: int | None = None
    external_data: tuple[dict[str, Any], ...] = ()
    derived_from: dict[str, str] | None = None
    # What the stage that made it records (export_parity, conversion, tensorrt, …), kept as written.
    details: Mapping[str, Any] = field(default_factory=dict)

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
            inputs=list(self.inputs),
            outputs=list(self.outputs),
            external_data=list(self.external_data),
            derived_from=self.derived_from,
        )
        return {**data, **self.details}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ArtifactEntry:
        """ManifestError naming the entry and every key it lacks."""
        absent = [k for k in ARTIFACT_KEYS if not isinstance(data, dict) or k not in data]
        if absent:
            raise ManifestError(f"{where} has no {', '.join(absent)}")
        own = {f.name for f in dataclasses.fields(cls)} - {"details"}
        values = {k: (tuple(v or ()) if k in _SEQUENCES else v) for k, v in data.items() if k in own}
        return cls(**values, details={k: v for k, v in data.items() if k not in own})

    def moved(self, record: Mapping[str, Any], external_data: tuple[dict[str, Any], ...]) -> ArtifactEntry:
        """The same artifact after its files were renamed into place (a new path and file records)."""
        return dataclasses.replace(
            self, path=record["path"], sha256=record["sha256"], bytes=record["bytes"], external_data=external_data
        )
