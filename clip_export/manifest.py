"""manifest.json, the one source of truth: atomic writes, file hashes and integrity checks."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ConversionError, IntegrityError, ManifestError
from .models import sha256_file

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside the target and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_manifest(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(f"{model_dir} has no {MANIFEST_NAME}; run 'clip-export onnx MODEL' first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "artifacts" not in data:
        raise ManifestError(f"{path} is not a clip-export manifest (no 'artifacts' list)")
    return data


def write_manifest(model_dir: Path, manifest: dict[str, Any]) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def file_record(path: Path, base: Path) -> dict[str, Any]:
    return {"path": path.relative_to(base).as_posix(), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def artifact_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry, *entry.get("external_data", [])]


def integrity_problems(model_dir: Path, entry: dict[str, Any]) -> list[str]:
    """Every way the files of one artifact differ from the manifest; empty when intact."""
    problems = []
    for record in artifact_files(entry):
        path = Path(model_dir) / record["path"]
        if not path.exists():
            problems.append(f"{record['path']} is missing")
            continue
        size = path.stat().st_size
        if size != record["bytes"]:
            problems.append(f"{record['path']} has {size} bytes, the manifest says {record['bytes']} (truncated or replaced)")
            continue
        if sha256_file(path) != record["sha256"]:
            problems.append(f"{record['path']} does not match its sha256 in the manifest (modified)")
    return problems


def require_intact(model_dir: Path, entry: dict[str, Any], context: str = "") -> None:
    """IntegrityError listing every problem, after `context` ("refusing to load x") when given."""
    problems = integrity_problems(model_dir, entry)
    if problems:
        raise IntegrityError(f"{context}: {'; '.join(problems)}" if context else "; ".join(problems))


def find_artifact(manifest: dict[str, Any], **match: str) -> dict[str, Any] | None:
    for entry in manifest["artifacts"]:
        if all(entry.get(k) == v for k, v in match.items()):
            return entry
    return None


def refuse_existing(manifest: dict[str, Any], model_dir: Path, path: str, force: bool) -> None:
    """Converting twice is refused unless --force: the manifest already lists that artifact."""
    if not force and find_artifact(manifest, path=path) is not None:
        raise ConversionError(f"{Path(model_dir) / path} already exists in the manifest; pass --force to rebuild it")


def upsert_artifact(manifest: dict[str, Any], entry: dict[str, Any]) -> None:
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] != entry["path"]] + [entry]


def model_dirs(root: Path) -> list[Path]:
    """The artifact directories a command acts on when DIR is left out."""
    root = Path(root)
    if (root / MANIFEST_NAME).exists():
        return [root]
    # Hidden directories are staging areas of exports in progress (or killed): never artifacts.
    dirs = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}") if not p.parent.name.startswith("."))
    if not dirs:
        raise ManifestError(f"no artifact directory (with {MANIFEST_NAME}) under {root}; run 'clip-export onnx MODEL' first")
    return dirs


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and tuples as plain JSON values; NaN becomes null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value != value:
        return None
    return value
