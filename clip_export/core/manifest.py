"""manifest.json, the one source of truth: atomic writes, file hashes and integrity checks."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from clip_export.core.artifact import ArtifactEntry, FileRecord, Manifest, VerificationRow
from clip_export.core.checkpoints import sha256_file
from clip_export.core.errors import IntegrityError, ManifestError, OutputError
from clip_export.core.spec import TOWERS

try:  # POSIX only; elsewhere concurrent runs are not detected (docs/reliability.md)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1
# What every reader relies on; a manifest without one of these is refused by name, not by KeyError.
REQUIRED_SECTIONS = ("model", "preprocess", "tokenizer", "artifacts")


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


def read_manifest(model_dir: Path) -> Manifest:
    path = Path(model_dir) / MANIFEST_NAME
    if not path.exists():
        raise ManifestError(f"{model_dir} has no {MANIFEST_NAME}; run 'clip-export onnx MODEL' first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("artifacts"), list):
        raise ManifestError(f"{path} is not a clip-export manifest (no 'artifacts' list)")
    if data.get("schema") != SCHEMA_VERSION:
        found = f"schema {data['schema']!r}" if "schema" in data else "no 'schema'"
        raise ManifestError(f"{path} has {found}; this clip-export reads manifest schema {SCHEMA_VERSION} only")
    missing = [s for s in REQUIRED_SECTIONS if not isinstance(data.get(s), (list if s == "artifacts" else dict))]
    if missing:
        raise ManifestError(
            f"{path} is missing the section(s) {', '.join(missing)}; a manifest written by 'clip-export "
            f"onnx' has {', '.join(REQUIRED_SECTIONS)}"
        )
    manifest = Manifest.from_json(data, str(path))
    for index, entry in enumerate(manifest.artifacts):
        if entry.tower not in TOWERS:
            raise ManifestError(
                f"{path}: artifacts[{index}].tower is {entry.tower!r}; a tower is one of {', '.join(TOWERS)}"
            )
    length = data["tokenizer"].get("context_length")
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise ManifestError(f"{path}: tokenizer.context_length is {length!r}; it must be a positive number of tokens")
    for where, named in named_paths(data):
        resolve_inside(model_dir, named, f"{path}: {where}")
    return manifest


def named_paths(value: Any, where: str = "") -> Iterator[tuple[str, Any]]:
    """(location, value) of every "path" in a manifest, at any depth: artifacts, external data,
    the reference, the tokenizer vocabulary, EPContext wrappers and whatever a later stage adds."""
    if isinstance(value, dict):
        for key, item in value.items():
            location = f"{where}.{key}" if where else str(key)
            if key == "path":
                yield location, item
            else:
                yield from named_paths(item, location)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from named_paths(item, f"{where}[{index}]")


def resolve_inside(model_dir: Path, record_path: Any, what: str) -> Path:
    """model_dir / record_path, refused before a byte is read unless it stays inside model_dir.

    A manifest is input: release copies (and uploads) what it names, so an absolute path, a
    '..' or a symlink out of the directory would publish any local file. The message names the
    entry and never anything about the file outside.
    """
    if not isinstance(record_path, str) or not record_path or "\x00" in record_path:
        raise ManifestError(f"{what} is {record_path!r}, not a file name inside {model_dir}")
    pure = PurePosixPath(record_path)
    if pure.is_absolute():
        raise ManifestError(
            f"{what} is the absolute path {record_path!r}; every file a manifest names must lie inside {model_dir}"
        )
    if ".." in pure.parts:
        raise ManifestError(f"{what} is {record_path!r}, which climbs out of {model_dir} with '..'")
    candidate = Path(model_dir) / pure
    if not candidate.resolve().is_relative_to(Path(model_dir).resolve()):
        raise ManifestError(f"{what} is {record_path!r}, a symlink that leads outside {model_dir}")
    return candidate


def write_manifest(model_dir: Path, manifest: Manifest) -> Path:
    path = Path(model_dir) / MANIFEST_NAME
    atomic_write_text(path, json.dumps(manifest.to_json(), indent=2, sort_keys=False) + "\n")
    return path


def file_record(path: Path, base: Path) -> FileRecord:
    return FileRecord(path.relative_to(base).as_posix(), sha256_file(path), path.stat().st_size)


def integrity_problems(model_dir: Path, entry: ArtifactEntry | FileRecord) -> list[str]:
    """Every way the files of one artifact (or one recorded file) differ from the manifest; empty when intact."""
    problems = []
    artifact = entry if isinstance(entry, ArtifactEntry) else None
    for index, record in enumerate(artifact.files if artifact else (entry,)):
        path = resolve_inside(model_dir, record.path, f"the manifest entry {record.path!r}")
        if not path.exists():
            problems.append(f"{record.path} is missing")
            continue
        size = path.stat().st_size
        if size != record.bytes:
            problems.append(f"{record.path} has {size} bytes, the manifest says {record.bytes} (truncated or replaced)")
            continue
        graph = artifact is not None and index == 0 and artifact.path.endswith(".onnx")
        digest, names_external_data = _sha256_and_location_key(path) if graph else (sha256_file(path), False)
        if digest != record.sha256:
            problems.append(f"{record.path} does not match its sha256 in the manifest (modified)")
        # Only then is the graph parsed (onnx's import and a parse: ~1.5 s on ViT-B/32).
        elif artifact is not None and names_external_data:
            problems.extend(unlisted_external_data(model_dir, artifact))
    return problems


# The protobuf bytes of StringStringEntryProto.key = "location" (field 1, length 8): every tensor stored
# as external data carries them, so a graph without them references no external data at all.
_LOCATION_KEY = b"\x0a\x08location"


def _sha256_and_location_key(path: Path, chunk: int = 1 << 22) -> tuple[str, bool]:
    """The file's sha256 and whether its bytes hold _LOCATION_KEY, in one read."""
    import hashlib

    digest, found, tail = hashlib.sha256(), False, b""
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            if not found:
                found = _LOCATION_KEY in block or _LOCATION_KEY in tail + block[: len(_LOCATION_KEY) - 1]
                tail = block[-(len(_LOCATION_KEY) - 1) :]
    return digest.hexdigest(), found


def graph_external_data(onnx_path: Path) -> list[str]:
    """The external-data locations the graph itself names (not the manifest), without loading the data."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    tensors = onnx.external_data_helper._get_all_tensors(model)
    return sorted(
        {
            i.value
            for t in tensors
            if onnx.external_data_helper.uses_external_data(t)
            for i in t.external_data
            if i.key == "location"
        }
    )


def unlisted_external_data(model_dir: Path, entry: ArtifactEntry) -> list[str]:
    """What the graph reads from outside itself that the manifest does not hash: each location must be a
    plain relative file inside the directory (no link, no `..`, not absolute) listed in external_data."""
    listed = {PurePosixPath(r.path).as_posix() for r in entry.external_data}
    folder = PurePosixPath(entry.path).parent
    problems = []
    for location in graph_external_data(resolve_inside(model_dir, entry.path, "the artifact")):
        where = PurePosixPath(location)
        relative = (folder / where).as_posix()
        if where.is_absolute() or ".." in where.parts or "\\" in location or os.path.islink(model_dir / relative):
            problems.append(
                f"{entry.path} references external data {location!r} outside its directory or through a link"
            )
        elif relative not in listed:
            problems.append(
                f"{entry.path} references external data {location!r} that the manifest does not list (unhashed)"
            )
    return problems


def require_intact(model_dir: Path, entry: ArtifactEntry | FileRecord, context: str = "") -> None:
    """IntegrityError listing every problem, after `context` ("refusing to load x") when given."""
    problems = integrity_problems(model_dir, entry)
    if problems:
        raise IntegrityError(f"{context}: {'; '.join(problems)}" if context else "; ".join(problems))


def intact_reference(model_dir: Path, manifest: Manifest, context: str, missing: str) -> tuple[FileRecord, Path]:
    """The stored reference's record and path, refused (IntegrityError after `context`) unless its bytes
    are the ones hashed at export; `missing` is the whole message where the manifest names none."""
    stored = manifest.section_file("reference", str(model_dir))
    if stored is None:
        raise ManifestError(missing)
    require_intact(model_dir, stored, context)
    return stored, resolve_inside(model_dir, stored.path, "the reference")


OVERRIDDEN_PASS = "pass (thresholds overridden: "  # a pass under loosened limits: never an ordinary pass


# Local paths the export was run with: where files were, not what they are (release moves them).
_WHERE_NOT_WHAT = ("path", "checkpoint", "tokenizer_dir", "text_config_dir")


def settings_digest(manifest: Manifest) -> str:
    """sha256 of every manifest section a verdict depends on besides the artifact's own bytes: the
    model it claims to be, the preprocessing and tokenizer settings that shape its inputs (files by
    their hashes), in-graph normalisation, and the reference it was compared with. A verdict records
    it and counts only while the manifest still says the same (verify, release, from_release)."""
    import hashlib

    def what(section: Any) -> Any:
        if not isinstance(section, dict):
            return section
        return {k: what(v) for k, v in section.items() if k not in _WHERE_NOT_WHAT}

    settings = {
        "model": what(manifest.section("model")),
        "preprocess": manifest.section("preprocess"),
        "tokenizer": what(manifest.section("tokenizer")),  # its files by sha256 and size: release renames them
        "normalize": manifest.normalize,
        "reference": what(manifest.section("reference")),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def passing_rows(
    manifest: Manifest, entry: ArtifactEntry, overridden: bool = False, any_settings: bool = False
) -> list[VerificationRow]:
    """The verification rows that passed for exactly this artifact's bytes and the manifest's current
    input settings (settings_digest), from any environment; a pass under overridden thresholds counts
    only when `overridden` (release --allow-overridden). `any_settings` drops the settings condition,
    to tell "verified, but with other settings" from "never verified" in messages."""
    settings = settings_digest(manifest)
    return [
        r
        for r in manifest.verification_rows
        if r.path == entry.path
        and r.sha256 == entry.sha256
        and (any_settings or r.settings_sha256 == settings)
        and (r.status == "pass" or (overridden and r.status.startswith(OVERRIDDEN_PASS)))
    ]


def refuse_existing(manifest: Manifest, model_dir: Path, path: str, force: bool) -> None:
    """Converting twice is refused unless --force: the manifest already lists that artifact."""
    if not force and manifest.find(path=path) is not None:
        raise OutputError(f"{Path(model_dir) / path} already exists in the manifest; pass --force to rebuild it")


def model_dirs(root: Path) -> list[Path]:
    """The artifact directories a command acts on when DIR is left out."""
    root = Path(root)
    if (root / MANIFEST_NAME).exists():
        return [root]
    # Hidden directories are staging areas of exports in progress (or killed): never artifacts.
    dirs = sorted(p.parent for p in root.glob(f"*/{MANIFEST_NAME}") if not p.parent.name.startswith("."))
    if not dirs:
        raise ManifestError(
            f"no artifact directory (with {MANIFEST_NAME}) under {root}; run 'clip-export onnx MODEL' first"
        )
    return dirs


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and tuples as plain JSON values; NaN becomes null. A verification row is
    shown as the row verify wrote (its JSON form), not as its wrapper."""
    if isinstance(value, VerificationRow):
        return to_jsonable(value.to_json())
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


_held: dict[Path, int] = {}  # locks this process holds, so nested stages (pipeline) re-enter them


@contextlib.contextmanager
def exclusive(target: Path) -> Iterator[None]:
    """Hold the write lock of a model or release directory for the whole run.

    Two runs writing the same directory must never silently replace each other: the second one
    fails at once with OutputError, before it loads or writes anything. The lock file lies beside
    the directory (`.<name>.lock` in its parent), so it exists before the directory does and
    survives the rename that swaps a new export into place. flock is released by the kernel when
    a process dies, so a killed run never leaves a stale lock.
    """
    target = Path(os.path.abspath(target))  # `release .` locks the directory by its name, beside it, like any other run
    key = target.parent.resolve() / target.name
    if fcntl is None or key in _held:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _held[key] -= 1
            if not _held[key]:
                del _held[key]
        return
    lock_path = target.parent / f".{target.name}.lock"
    fd = _take_lock(lock_path, target)
    _held[key] = 1
    try:
        yield
    finally:
        del _held[key]
        with contextlib.suppress(OSError):  # before closing: whoever opens it next makes a new one
            if os.lstat(lock_path).st_ino == os.fstat(fd).st_ino:  # only the file we locked
                lock_path.unlink()
        os.close(fd)


def _refuse_foreign_lock(fd: int, lock_path: Path) -> None:
    """Write only into a lock file of our own: a plain file, owned by us, with no other name (a
    planted hard link would otherwise let the pid we write truncate someone else's file)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
        os.close(fd)
        raise OutputError(
            f"{lock_path} is not a lock file clip-export made (not a plain file of ours with one name); "
            "remove it and run again"
        )


def _take_lock(lock_path: Path, target: Path) -> int:
    """An fd holding flock on lock_path; retried when the holder removed the file between our
    open and our flock, since a lock on a removed file would exclude nobody."""
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # O_NOFOLLOW: a planted symlink at the lock path must not let us open (or write) its target.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if os.path.islink(lock_path):
                raise OutputError(
                    f"{lock_path} is a symbolic link; remove it (clip-export never follows a link at its lock path)"
                ) from exc
            raise OutputError(
                f"{target.parent} is not writable (the lock file {lock_path.name}: {exc.strerror or exc})"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(
                f"another clip-export run (pid {holder}) is writing {target}; wait for it to finish, or write "
                "somewhere else"
            ) from exc
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            _refuse_foreign_lock(fd, lock_path)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)
