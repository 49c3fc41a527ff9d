from __future__ import annotations

import os
from pathlib import Path

import pytest

from clip_export.core.artifact import Manifest
from clip_export.core.errors import ManifestError, OutputError
from clip_export.core.manifest import exclusive, named_paths, resolve_inside


def test_resolve_inside_accepts_files_and_inner_symlinks(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.onnx").write_bytes(b"x")
    (tmp_path / "link.onnx").symlink_to(tmp_path / "sub" / "a.onnx")
    assert resolve_inside(tmp_path, "sub/a.onnx", "entry") == tmp_path / "sub" / "a.onnx"
    assert resolve_inside(tmp_path, "link.onnx", "entry") == tmp_path / "link.onnx"
    assert resolve_inside(tmp_path, "not-yet-written.onnx", "entry") == tmp_path / "not-yet-written.onnx"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/etc/passwd", "absolute path"),
        ("../x.onnx", "climbs out"),
        ("sub/../../x", "climbs out"),
        ("", "not a file name"),
        (None, "not a file name"),
        ("a\x00b", "not a file name"),
        ("escape/x.onnx", "symlink that leads outside"),
    ],
)
def test_resolve_inside_refuses_what_leaves(tmp_path: Path, path: object, message: str) -> None:
    inside = tmp_path / "model"
    inside.mkdir()
    (inside / "escape").symlink_to(tmp_path)  # a folder on the way that leads out
    with pytest.raises(ManifestError, match=f"artifacts\\[0\\]\\.path is .*{message}"):
        resolve_inside(inside, path, "artifacts[0].path")


def test_named_paths_finds_every_depth() -> None:
    manifest = {
        "artifacts": [{"path": "a", "external_data": [{"path": "b"}], "epcontext": {"path": "c"}}],
        "tokenizer": {"file": {"path": "d"}},
    }
    assert list(named_paths(manifest)) == [
        ("artifacts[0].path", "a"),
        ("artifacts[0].external_data[0].path", "b"),
        ("artifacts[0].epcontext.path", "c"),
        ("tokenizer.file.path", "d"),
    ]


def test_exclusive_is_reentrant_in_one_process(tmp_path: Path) -> None:
    with exclusive(tmp_path / "model"), exclusive(tmp_path / "model"):
        pass
    assert not (tmp_path / ".model.lock").exists()  # removed when the run ends


def test_exclusive_refuses_an_unwritable_parent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="is not writable"):
        with exclusive(blocker / "model"):
            pass


def test_exclusive_refuses_a_planted_symlink_and_leaves_its_target_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    (tmp_path / ".model.lock").symlink_to(victim)
    with pytest.raises(OutputError, match=r"\.model\.lock is a symbolic link; remove it"):
        with exclusive(tmp_path / "model"):
            pass
    assert victim.read_text() == "precious\n"
    assert (tmp_path / ".model.lock").is_symlink()  # not ours to remove


def test_exclusive_never_writes_into_a_hard_linked_lock(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.link(victim, tmp_path / ".model.lock")
    with pytest.raises(OutputError, match=r"\.model\.lock is not a lock file clip-export made"):
        with exclusive(tmp_path / "model"):
            pass
    assert victim.read_text() == "precious\n"


def test_exclusive_reuses_a_stale_lock_of_its_own(tmp_path: Path) -> None:
    (tmp_path / ".model.lock").write_text("999999\n")  # left by a killed run
    with exclusive(tmp_path / "model"):
        assert (tmp_path / ".model.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".model.lock").exists()


def test_integrity_sees_external_data_the_manifest_does_not_list(tiny_vit_copy: Path) -> None:
    from clip_export.core.artifact import FileRecord
    from clip_export.core.manifest import integrity_problems, read_manifest

    from ..helpers import move_weights_to_unlisted_data

    move_weights_to_unlisted_data(tiny_vit_copy)
    entry = read_manifest(tiny_vit_copy).find(path="visual.onnx")
    assert entry is not None
    assert integrity_problems(tiny_vit_copy, entry) == [
        "visual.onnx references external data 'visual.onnx.extra' that the manifest does not list (unhashed)"
    ]
    entry = entry.moved(entry.files[0], (FileRecord("visual.onnx.extra", "0" * 64, 1),))
    assert "has " in integrity_problems(tiny_vit_copy, entry)[0]  # once listed, its bytes are checked


def test_integrity_refuses_external_data_through_a_link(tiny_vit_copy: Path, tmp_path: Path) -> None:
    from clip_export.core.manifest import integrity_problems, read_manifest

    from ..helpers import move_weights_to_unlisted_data

    move_weights_to_unlisted_data(tiny_vit_copy, location="linked.data")
    (tiny_vit_copy / "linked.data").rename(tmp_path / "outside.data")
    (tiny_vit_copy / "linked.data").symlink_to(tmp_path / "outside.data")
    entry = read_manifest(tiny_vit_copy).find(path="visual.onnx")
    assert entry is not None
    assert "outside its directory or through a link" in integrity_problems(tiny_vit_copy, entry)[0]


def _manifest_for_digest() -> Manifest:
    return Manifest.from_json(
        {
            "model": {
                "name": "m",
                "arch": "ViT-B-32",
                "seed": 0,
                "embed_dim": 512,
                "tokenizer_dir": "/a",
                "checkpoint": None,
            },
            "preprocess": {"mean": [0.5, 0.5, 0.5]},
            "tokenizer": {"context_length": 77, "file": {"path": "tokenizer.json", "sha256": "t" * 64, "bytes": 3}},
            "normalize": False,
            "reference": {"path": "reference.npz", "sha256": "r" * 64, "bytes": 9, "evalset": "bundled"},
            "artifacts": [],
        },
        "test",
    )


@pytest.mark.parametrize(
    "section, key, value",
    [
        ("model", "embed_dim", 768),
        ("model", "arch", "ViT-L-14"),
        ("model", "seed", 1),
        ("preprocess", "mean", [0.4, 0.5, 0.5]),
        ("tokenizer", "context_length", 64),
        ("reference", "sha256", "s" * 64),
        ("reference", "evalset", "custom"),
    ],
)
def test_settings_digest_covers_every_section_a_verdict_depends_on(section: str, key: str, value: object) -> None:
    """A verdict used to cover preprocessing and tokenizer only: an edited model or reference kept it."""
    from clip_export.core.manifest import settings_digest

    manifest = _manifest_for_digest()
    before = settings_digest(manifest)
    manifest.section(section)[key] = value
    assert settings_digest(manifest) != before


def test_settings_digest_ignores_where_files_lie() -> None:
    """release renames every file and an export records local directories: neither changes a verdict."""
    from clip_export.core.manifest import settings_digest

    manifest = _manifest_for_digest()
    before = settings_digest(manifest)
    manifest.section("reference")["path"] = "model-reference.npz"
    manifest.section("tokenizer")["file"]["path"] = "model-tokenizer.json"
    manifest.section("model")["tokenizer_dir"] = "/elsewhere"
    manifest.set_section("verification", {"results": []})
    manifest.set_section("release", {"tag": "v1"})
    assert settings_digest(manifest) == before


@pytest.mark.parametrize("offset", [0, 3, 6, 9, 12])
def test_the_location_key_scan_sees_the_key_across_read_boundaries(tmp_path: Path, offset: int) -> None:
    """integrity parses a graph (onnx's import and a full parse, ~1.5 s on ViT-B/32) only when its
    bytes hold an external-data location key: a key split between two reads must still count."""
    import hashlib

    from clip_export.core.manifest import _LOCATION_KEY, _sha256_and_location_key

    data = b"x" * offset + _LOCATION_KEY + b"y" * 7
    path = tmp_path / "g.onnx"
    path.write_bytes(data)
    assert _sha256_and_location_key(path, chunk=8) == (hashlib.sha256(data).hexdigest(), True)
    path.write_bytes(data.replace(b"location", b"locatiom"))
    assert _sha256_and_location_key(path, chunk=8)[1] is False


def test_intact_reference_is_the_one_way_the_stored_reference_is_trusted(tiny_vit_copy: Path) -> None:
    from clip_export.core.errors import IntegrityError
    from clip_export.core.manifest import intact_reference, read_manifest

    manifest = read_manifest(tiny_vit_copy)
    record, path = intact_reference(tiny_vit_copy, manifest, "ctx", missing="none here")
    assert path.samefile(tiny_vit_copy / record.path)
    with path.open("r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 1]))
    with pytest.raises(IntegrityError, match="^ctx: .*sha256"):
        intact_reference(tiny_vit_copy, manifest, "ctx", missing="none here")
    manifest.drop_section("reference")
    with pytest.raises(ManifestError, match="^none here$"):
        intact_reference(tiny_vit_copy, manifest, "ctx", missing="none here")
