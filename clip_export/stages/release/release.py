"""Release: the assets a maintainer attaches on release day, checked and hashed."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clip_export.core.artifact import SECTION_FILES, ArtifactEntry, FileRecord, Manifest
from clip_export.core.checkpoints import sha256_file
from clip_export.core.errors import ManifestError, ReleaseError
from clip_export.core.manifest import (
    MANIFEST_NAME,
    atomic_write_text,
    exclusive,
    file_record,
    integrity_problems,
    now_iso,
    passing_rows,
    read_manifest,
    resolve_inside,
    write_manifest,
)
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import ONNX_FORMAT, PREPROCESSING_FORMAT, TENSORRT_FORMAT, TOKENIZER_FORMAT, int8_family_of
from clip_export.stages.release.hf_layout import HF_DIR, write_layout
from clip_export.stages.release.model_card import model_card, passing_environments

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ReleaseResult:
    tag: str
    directory: Path
    assets: tuple[str, ...]
    uploaded: bool
    sources: tuple[Path, ...]


def check_releasable(model_dir: Path, manifest: Manifest, allow_overridden: bool = False) -> list[str]:
    problems = []
    label = Path(os.path.abspath(model_dir)).name or str(model_dir)  # `release .` names its directory
    for entry in manifest.artifacts:
        for issue in integrity_problems(model_dir, entry):
            problems.append(f"{label}/{issue}")
        try:
            verified = passing_environments(manifest, entry, allow_overridden)
            loosened = not verified and passing_environments(manifest, entry, True)
        except ManifestError as exc:
            problems.append(f"{label}: {exc}")
            continue
        if loosened:
            problems.append(
                f"{label}/{entry.path} passed 'clip-export verify' only with thresholds overridden; "
                "verify it under the declared thresholds, or pass --allow-overridden to ship it as such"
            )
        elif not verified and passing_rows(manifest, entry, any_settings=True):
            problems.append(
                f"{label}/{entry.path} passed 'clip-export verify' with other model, preprocessing, "
                "tokenizer or reference settings than the manifest now holds; run 'clip-export verify' again"
            )
        elif not verified:
            problems.append(f"{label}/{entry.path} has not passed 'clip-export verify' in its current form")
    for key in SECTION_FILES:
        record = manifest.section_file(key, label)
        if record:
            for issue in integrity_problems(model_dir, record):
                problems.append(f"{label}/{issue}")
    tokenizer_file = manifest.section_file("tokenizer.file", label)
    if tokenizer_file and manifest.find(tower="text") is not None:
        rows = [
            r for r in manifest.verification_rows if r.format == TOKENIZER_FORMAT and r.sha256 == tokenizer_file.sha256
        ]
        if rows and not any(r.status == "pass" for r in rows):
            problems.append(
                f"{label}/{tokenizer_file.path} failed its check in 'clip-export verify': "
                + "; ".join(f for r in rows for f in r.failures)
            )
        elif not rows and manifest.verification and "tokenizers" in manifest.verification.versions:
            # a verify that checks tokenizers ran, but not on these bytes
            problems.append(
                f"{label}/{tokenizer_file.path} has no verdict for its current bytes; run 'clip-export "
                f"verify {model_dir}'"
            )
    return problems


def release_slug(dirs: Sequence[Path], model_name: str) -> str:
    """What asset names start with: the export directory's own name (also for `release .`, whose
    name is empty until resolved), or the model's name when several directories or an unusable name."""
    names = {Path(os.path.abspath(d)).name for d in dirs}  # "." by its name; a link by the name typed
    if len(names) == 1:
        (name,) = names
        if SAFE_NAME.match(name):
            return name
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", model_name).strip(".-_")
    if not slug:
        raise ReleaseError(
            f"cannot name the assets: the directory {dirs[0]} and the model name {model_name!r} hold no "
            "letters or digits"
        )
    return slug


def asset_name(slug: str, entry: ArtifactEntry) -> str:
    if entry.format == TENSORRT_FORMAT:
        sm = entry.detail("tensorrt", {}).get("compute_capability", "unknown").replace(".", "")
        name = f"{slug}-{entry.tower}-trt-{entry.precision}-sm{sm}.plan"
    else:
        family = int8_family_of(entry)  # two INT8 files per tower, one per kernel family: int8 (QInt8), uint8 (QUInt8)
        precision = family.file_tag if family is not None else entry.precision
        name = (
            f"{slug}-{entry.tower}-{precision}{'-preprocessing' if entry.format == PREPROCESSING_FORMAT else ''}.onnx"
        )
    return safe_asset_name(name)


def safe_asset_name(name: str) -> str:
    if not SAFE_NAME.match(name) or ".." in name:
        raise ReleaseError(
            f"unsafe asset name '{name}': only letters, digits, '.', '_' and '-' are allowed, with no path parts"
        )
    return name


def _inside(out: Path, name: str) -> Path:
    target = (out / safe_asset_name(name)).resolve()
    if target.parent != out.resolve():
        raise ReleaseError(f"asset {name} would be written outside {out}")
    return target


def _copy_onnx_with_renamed_data(source_dir: Path, entry: ArtifactEntry, staging: Path, name: str) -> list[str]:
    """Copy an ONNX artifact; external data files get release names and the graph points at them."""
    source = resolve_inside(source_dir, entry.path, "the artifact")
    if not entry.external_data:
        return _copy_plain(source, staging, name, entry.files[0])
    import onnx

    graph = source.read_bytes()  # hashed and parsed from the same bytes, so the graph shipped is the one verified
    if hashlib.sha256(graph).hexdigest() != entry.sha256:
        raise ReleaseError(_CHANGED.format(entry.path))
    model = onnx.load_model_from_string(graph)
    renames = {}
    for index, record in enumerate(entry.external_data):
        new = f"{name}.data" if len(entry.external_data) == 1 else f"{name}.data{index}"
        renames[Path(record.path).name] = new
        _copy_plain(resolve_inside(source_dir, record.path, "the external data"), staging, new, record)
    for tensor in model.graph.initializer:
        for item in tensor.external_data:
            if item.key == "location":
                item.value = renames[item.value]
    onnx.save_model(model, str(_inside(staging, name)))
    return [name, *renames.values()]


def merge_manifests(dirs: Sequence[Path]) -> tuple[Manifest, dict[str, Path]]:
    """One manifest for several artifact directories of the same model (e.g. engines per GPU)."""
    manifests = [(d, read_manifest(d)) for d in dirs]
    base_dir, base = manifests[0]
    key = lambda m: (m.model.arch, m.model.pretrained, m.model.checkpoint_sha256, m.model.seed)
    merged = Manifest([], json.loads(json.dumps(base.sections)))
    verification: dict[str, Any] = {"date": now_iso(), "results": [], "merged_from": []}
    merged.set_section("verification", verification)
    owners: dict[str, Path] = {}
    by_path: dict[str, ArtifactEntry] = {}
    for model_dir, manifest in manifests:
        if key(manifest) != key(base):
            raise ReleaseError(
                f"{model_dir} holds another model ({manifest.model.arch}) than {base_dir} ({base.model.arch}); "
                "merge only builds of one model"
            )
        for entry in manifest.artifacts:
            existing = by_path.get(entry.path)
            if existing is not None:
                if existing.sha256 == entry.sha256:
                    continue
                if entry.format == TENSORRT_FORMAT:
                    raise ReleaseError(
                        f"{entry.path} exists in two directories with different bytes; engines for different GPUs "
                        "must differ in compute capability"
                    )
                raise ReleaseError(
                    f"{entry.path} differs between {owners[entry.path]} and {model_dir}; one model's ONNX artifacts "
                    "must be identical to merge"
                )
            by_path[entry.path] = entry
            owners[entry.path] = model_dir
            merged.upsert(entry)
        tokenizer_file = base.section_file("tokenizer.file", str(base_dir))
        verification["results"] += [
            copy.deepcopy(r.to_json())  # release's copy shares no dict with the source manifest
            for r in manifest.verification_rows
            if owners.get(r.path) == model_dir
            or (
                model_dir == base_dir
                and tokenizer_file is not None
                and r.path == tokenizer_file.path
                and r.sha256 == tokenizer_file.sha256
            )
        ]
        verification["merged_from"].append(
            {
                "dir": str(model_dir),
                "date": manifest.verification.date if manifest.verification else None,
                "machine": manifest.verification.machine if manifest.verification else None,
            }
        )
    return merged, owners


def release(
    dirs: Sequence[Path],
    *,
    tag: str,
    out: Path = Path("dist"),
    upload: bool = False,
    client_check: str = "auto",
    progress: Progress = silent,
    allow_overridden: bool = False,
) -> ReleaseResult:
    """`client_check`: "auto" measures transformers.js on hf/ where Node and the npm packages are
    installed and records why not elsewhere, "require" fails without them, "off" skips it."""
    from clip_export.stages.release.clients import CLIENT_CHECK_MODES

    if client_check not in CLIENT_CHECK_MODES:
        raise ReleaseError(f"client check {client_check!r}: use one of {', '.join(CLIENT_CHECK_MODES)}")
    if not tag or not SAFE_NAME.match(tag):
        raise ReleaseError(f"invalid tag '{tag}': use letters, digits, '.', '_' and '-'")
    dirs = [Path(d) for d in dirs]
    with contextlib.ExitStack() as held:  # no conversion rewrites a source directory while it ships
        for d in dirs:
            held.enter_context(exclusive(d))
        return _release(dirs, tag, out, upload, client_check, progress, allow_overridden)


def _release(
    dirs: list[Path], tag: str, out: Path, upload: bool, client_check: str, progress: Progress, allow_overridden: bool
) -> ReleaseResult:
    from clip_export.stages.release.clients import client_check as check_clients

    problems = [p for d in dirs for p in check_releasable(d, read_manifest(d), allow_overridden)]
    if problems:
        raise ReleaseError("refusing to release: " + "; ".join(problems))
    if client_check == "require":  # before any asset is copied, not after
        from clip_export.stages.release.clients import find_transformers_js

        setup = find_transformers_js()
        if isinstance(setup, str):
            raise ReleaseError(f"--client-check require: {setup}")
    merged, owners = merge_manifests(dirs)
    slug = release_slug(dirs, merged.model.name)
    target = Path(out) / safe_asset_name(f"{slug}-{tag}")
    with exclusive(target):  # a second release of the same tag fails here, at once
        if target.exists():
            raise ReleaseError(f"{target} already exists; choose a new tag or remove it")
        Path(out).mkdir(parents=True, exist_ok=True)
        staging = Path(out) / f".{target.name}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            assets: list[str] = []
            renamed: dict[str, str] = {}
            released: list[ArtifactEntry] = []
            for entry in merged.artifacts:
                name = asset_name(slug, entry)
                progress(f"adding {name}")
                assets += (
                    _copy_onnx_with_renamed_data(owners[entry.path], entry, staging, name)
                    if entry.format in (ONNX_FORMAT, PREPROCESSING_FORMAT)
                    else _copy_plain(
                        resolve_inside(owners[entry.path], entry.path, "the artifact"), staging, name, entry.files[0]
                    )
                )
                renamed[entry.path] = name
                released.append(
                    entry.moved(
                        file_record(staging / name, staging),
                        tuple(file_record(staging / n, staging) for n in assets if n.startswith(f"{name}.data")),
                    ).with_details(source_path=entry.path)
                )
            merged.replace_artifacts(released)
            released_sha = {e.path: e.sha256 for e in released}
            merged.replace_verification_rows(
                [
                    r.moved(renamed[r.path], released_sha[renamed[r.path]]) if r.path in renamed else r
                    for r in merged.verification_rows
                ]
            )
            stored = merged.section_file("reference", "the merged manifest")
            if stored:
                ref_name = safe_asset_name(f"{slug}-reference.npz")
                assets += _copy_plain(resolve_inside(dirs[0], stored.path, "the reference"), staging, ref_name, stored)
                merged.move_section_file("reference", file_record(staging / ref_name, staging))
            for key, suffix in (("file", "tokenizer.json"), ("bpe_vocab", "tokenizer-bpe.txt.gz")):
                source = merged.section_file(f"tokenizer.{key}", "the merged manifest")
                if source:
                    name = safe_asset_name(f"{slug}-{suffix}")
                    assets += _copy_plain(
                        resolve_inside(dirs[0], source.path, "the tokenizer file"), staging, name, source
                    )
                    merged.replace_verification_rows(  # verify's tokenizer row follows its file
                        [r.moved(name) if r.path == source.path else r for r in merged.verification_rows]
                    )
                    merged.move_section_file(f"tokenizer.{key}", file_record(staging / name, staging))
            progress(f"writing the Hugging Face layout into {HF_DIR}/")
            merged.set_section("hf_layout", write_layout(staging, merged))
            merged.set_section("release", {"tag": tag, "created": now_iso(), "sources": [str(d) for d in dirs]})
            write_manifest(staging, merged)
            if client_check != "off":
                progress("embedding the bundled set with transformers.js from hf/")
            merged.set_section("clients", {"transformers.js": check_clients(staging, client_check, progress=progress)})
            write_manifest(staging, merged)
            atomic_write_text(staging / "MODEL_CARD.md", model_card(merged, slug, tag))
            assets += [MANIFEST_NAME, "MODEL_CARD.md"]
            sums = "".join(f"{sha256_file(staging / a)}  {a}\n" for a in sorted(assets))
            atomic_write_text(staging / "SHA256SUMS", sums)
            assets.append("SHA256SUMS")
            if target.exists():  # written meanwhile by something that ignores the lock
                raise ReleaseError(f"{target} appeared while this release was written; choose a new tag or remove it")
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    uploaded = False
    if upload:
        progress(f"uploading {len(assets)} assets to the GitHub release {tag}")
        upload_with_gh(target, tag, assets)
        uploaded = True
    return ReleaseResult(tag, target, tuple(assets), uploaded, tuple(dirs))


_CHANGED = "refusing to release: {} changed while the release was written (its bytes are not the ones verified); run 'clip-export verify' again"


def _copy_plain(source: Path, staging: Path, name: str, record: FileRecord) -> list[str]:
    """Copy, then hash the copy: a file replaced after the checks must not ship under their verdict."""
    shutil.copyfile(source, _inside(staging, name))
    if sha256_file(_inside(staging, name)) != record.sha256:
        raise ReleaseError(_CHANGED.format(record.path))
    return [name]


def upload_with_gh(directory: Path, tag: str, assets: Sequence[str]) -> None:
    """All assets in one `gh release upload`; any failure is an error, never a partial success."""
    gh = shutil.which("gh")
    if gh is None:
        raise ReleaseError(
            f"--upload needs the GitHub CLI 'gh', which is not installed; the assets are ready in {directory}"
        )
    auth = subprocess.run([gh, "auth", "status"], capture_output=True, text=True)
    if auth.returncode != 0:
        raise ReleaseError(
            f"--upload: gh is not authenticated (run 'gh auth login'); the assets are ready in {directory}"
        )
    view = subprocess.run([gh, "release", "view", tag], capture_output=True, text=True)
    if view.returncode != 0:
        created = subprocess.run(
            [gh, "release", "create", tag, "--title", tag, "--notes-file", str(directory / "MODEL_CARD.md")],
            capture_output=True,
            text=True,
        )
        if created.returncode != 0:
            raise ReleaseError(
                f"gh release create {tag} failed: {created.stderr.strip().splitlines()[-1] if created.stderr.strip() else created.returncode}"
            )
    done = subprocess.run(
        [gh, "release", "upload", tag, *[str(directory / a) for a in assets]], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise ReleaseError(
            f"gh release upload {tag} failed, check the release for partial assets: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        )
