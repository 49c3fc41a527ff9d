"""Bad inputs and careless callers: each case below is run, and docs/reliability.md is this list.

Regenerate the table with `python tools/reliability_table.py`; test_reliability_doc_is_current
fails when the doc and CASES drift apart.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from onnxruntime.capi.onnxruntime_pybind11_state import Fail as OnnxRuntimeFail
from PIL import Image

from clip_export.cli import main
from clip_export.core.errors import ClipExportError, ManifestError, OutputError, ReleaseError
from clip_export.core.manifest import read_manifest
from clip_export.core.models import sha256_file
from clip_export.runtime import ClipOnnx
from clip_export.stages.convert import convert_fp16
from clip_export.stages.release.release import release
from clip_export.stages.verify import verify

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- cases: begin (tools/reliability_table.py) -->", "<!-- cases: end -->"
TINY_CONFIGS = Path(__file__).parent / "configs"


class CliError(Exception):
    """A CLI run that exited 1 with exactly one `Error:` line on stderr (that line is the message)."""


@dataclass
class Ctx:
    model_dir: Path  # a private copy of the tiny export
    tmp: Path
    shared_dir: Path  # the read-only tiny export
    monkeypatch: pytest.MonkeyPatch

    def runtime(self) -> ClipOnnx:
        return ClipOnnx.from_release(self.shared_dir)


@dataclass(frozen=True)
class Case:
    bad_input: str
    where: str
    error: type[Exception] | None  # None: the input is accepted, and `run` checks the result
    match: str  # regex the message must match (what the table shows)
    run: Callable[[Ctx], Any]


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    lines = result.stderr.strip().splitlines()
    if result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: "):
        raise CliError(lines[0])
    raise AssertionError(f"expected one Error line and exit 1, got exit {result.exit_code}: {result.stderr!r}")


def edit_manifest(model_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = model_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def outside_file(ctx: Ctx, data: bytes = b"root:x:0:0:secret\n") -> tuple[Path, dict[str, Any]]:
    secret = ctx.tmp / "outside" / "secret.txt"
    secret.parent.mkdir(exist_ok=True)
    secret.write_bytes(data)
    return secret, {"sha256": sha256_file(secret), "bytes": secret.stat().st_size}


def point_artifact_outside(ctx: Ctx) -> None:
    secret, record = outside_file(ctx)
    edit_manifest(ctx.model_dir, lambda m: m["artifacts"][0].update(path=str(secret), **record))


def symlink_artifact_outside(ctx: Ctx) -> None:
    """The artifact replaced by a symlink to an identical file outside: the hashes still match."""
    text = ctx.model_dir / "text.onnx"
    outside = ctx.tmp / "outside.onnx"
    outside.write_bytes(text.read_bytes())
    text.unlink()
    text.symlink_to(outside)


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: what a decompression bomb looks like."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    return bytes(data)


def png_bytes(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def checkpoint_with_nan(ctx: Ctx) -> Path:
    import torch

    from clip_export import load_model, resolve

    state = load_model(resolve("tiny-vit", random_init=True)).model.state_dict()
    state["visual.proj"][0, 0] = float("nan")
    path = ctx.tmp / "nan.pt"
    torch.save(state, path)
    return path


def child(code: str, *args: str) -> subprocess.Popen[str]:
    """A second, real clip-export process (the tiny configs registered, this checkout imported)."""
    prelude = f"import open_clip; open_clip.add_model_config({str(TINY_CONFIGS)!r}); "
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def release_into_a_closed_pipe(ctx: Ctx) -> None:
    assert verify(ctx.model_dir).passed
    out = ctx.tmp / "dist"
    run = "import sys; from clip_export.cli import main; sys.argv[0] = 'clip-export'; main()"
    proc = child(run, "release", str(ctx.model_dir), "--tag", "v1", "--out", str(out), "--client-check", "off", "-q")
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader went away, as `| head -1` does after its line
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0, err
    assert (out / "tiny-vit-v1" / "SHA256SUMS").exists()


def convert_while_another_process_holds_the_lock(ctx: Ctx) -> None:
    holder = child(
        "import sys, time; from pathlib import Path; from clip_export.core.manifest import exclusive\nwith exclusive(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)",
        str(ctx.model_dir),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        convert_fp16(ctx.model_dir, towers=["visual"])
    finally:
        holder.kill()
        holder.wait()


def export_while_another_export_runs(ctx: Ctx) -> None:
    """Two real exports into one --out: the second fails at once; the first finishes untouched."""
    out = ctx.tmp / "out"
    first = child(
        "from clip_export.cli import main; main()", "onnx", "tiny-vit", "--random-init", "--out", str(out), "--quiet"
    )
    deadline = time.monotonic() + 120
    while not list(out.glob(".tiny-vit.partial-*")) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.poll() is None, "the first export ended before the second could start"
    try:
        cli("onnx", "tiny-vit", "--random-init", "--out", str(out), "--quiet")
    finally:
        _, stderr = first.communicate(timeout=300)
        assert first.returncode == 0, stderr
        assert read_manifest(out / "tiny-vit").artifacts


def embed_one_caption(ctx: Ctx) -> None:
    model = ctx.runtime()
    assert model.embed_texts("a cat").shape[0] == 1
    np.testing.assert_array_equal(model.embed_texts("a cat"), model.embed_texts(["a cat"]))


def embed_array_and_bytes(ctx: Ctx) -> None:
    model = ctx.runtime()
    array = np.full((30, 40, 3), 128, np.uint8)
    from_array, from_bytes = model.embed_images(array), model.embed_images([png_bytes()])
    assert from_array.shape[0] == 1
    np.testing.assert_allclose(from_array, from_bytes, atol=1e-6)


def huge_photo_takes_the_exact_path(ctx: Ctx) -> None:
    from clip_export.core import resample

    model, exact = (
        ctx.runtime(),
        ClipOnnx.from_release(ctx.shared_dir, preprocess="exact"),
    )  # their checks run the kernels
    ctx.monkeypatch.setattr(
        resample, "crop_resize_normalise", lambda *a: pytest.fail("the vectorised kernels ran on a huge image")
    )
    photo = np.zeros((4000, 6001, 3), np.uint8)
    photo[:, ::7] = 255
    np.testing.assert_array_equal(model.pixel_values(photo), exact.pixel_values(photo))


def disk_fills_during_a_forced_export(ctx: Ctx) -> None:
    import errno

    out = ctx.tmp / "out"
    cli_ok = CliRunner().invoke(main, ["onnx", "tiny-vit", "--random-init", "--out", str(out), "-q"])
    assert cli_ok.exit_code == 0, cli_ok.stderr
    before = (out / "tiny-vit" / "manifest.json").read_bytes()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    ctx.monkeypatch.setattr("clip_export.stages.export.np.savez", full)
    try:
        cli("onnx", "tiny-vit", "--random-init", "--out", str(out), "--force", "-q")
    finally:
        assert (out / "tiny-vit" / "manifest.json").read_bytes() == before
        assert [p.name for p in out.iterdir() if p.name.startswith(".tiny-vit.partial")] == []


def release_from_inside(ctx: Ctx) -> None:
    verify(ctx.model_dir)
    ctx.monkeypatch.chdir(ctx.model_dir)
    result = release([Path(".")], tag="v1", out=ctx.tmp / "dist", client_check="off")
    assert result.directory.name == f"{ctx.model_dir.name}-v1"
    named = [a for a in result.assets if a.endswith((".onnx", ".npz"))]
    assert named and all(a.startswith(f"{ctx.model_dir.name}-") for a in named)
    assert not list(ctx.model_dir.glob("..lock"))  # the lock lay beside the directory, as for every other run


def bomb_sized_array_to_the_preprocessing_graph(ctx: Ctx) -> None:
    from clip_export.core.preprocess_graph import preprocessing_model
    from clip_export.core.sessions import create_session
    from clip_export.core.spec import RAW_IMAGE_INPUT

    graph = create_session(preprocessing_model(read_manifest(ctx.shared_dir).preprocess).SerializeToString())
    graph.run(None, {RAW_IMAGE_INPUT: np.zeros((13400, 13400, 3), np.uint8)})  # unwritten zeros: no memory yet


CASES: list[Case] = [
    Case(
        "artifact path is an absolute path to a local file, with its true sha256 and size",
        "`clip-export release`",
        ManifestError,
        "artifacts\\[0\\]\\.path is the absolute path",
        lambda ctx: (point_artifact_outside(ctx), release([ctx.model_dir], tag="v1", out=ctx.tmp / "dist")),
    ),
    Case(
        "artifact path climbs out with `../`",
        "`clip-export verify`",
        ManifestError,
        "artifacts\\[1\\]\\.path is '\\.\\./.*', which climbs out",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["artifacts"][1].update(path="../../outside/text.onnx")),
            verify(ctx.model_dir),
        ),
    ),
    Case(
        "artifact file is a symlink to an identical file outside the directory",
        "`ClipOnnx.from_release`",
        ManifestError,
        "artifacts\\[1\\]\\.path is 'text\\.onnx', a symlink that leads outside",
        lambda ctx: (symlink_artifact_outside(ctx), ClipOnnx.from_release(ctx.model_dir)),
    ),
    Case(
        "external data entry is an absolute path",
        "`clip-export fp16`",
        ManifestError,
        "external_data\\[0\\]\\.path is the absolute path",
        lambda ctx: (
            edit_manifest(
                ctx.model_dir,
                lambda m: m["artifacts"][0].update(
                    external_data=[{"path": str(outside_file(ctx)[0]), **outside_file(ctx)[1]}]
                ),
            ),
            convert_fp16(ctx.model_dir),
        ),
    ),
    Case(
        "tokenizer file path climbs out",
        "`ClipOnnx.from_release`",
        ManifestError,
        "tokenizer\\.file\\.path is '\\.\\./tokenizer\\.json', which climbs out",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["tokenizer"]["file"].update(path="../tokenizer.json")),
            ClipOnnx.from_release(ctx.model_dir),
        ),
    ),
    Case(
        "reference path is absolute",
        "`clip-export verify`",
        ManifestError,
        "reference\\.path is the absolute path",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["reference"].update(path="/etc/hostname")),
            verify(ctx.model_dir),
        ),
    ),
    Case(
        "any other entry's path (here an EPContext wrapper) climbs out",
        "`clip-export release`",
        ManifestError,
        "artifacts\\[0\\]\\.epcontext\\.path is '\\.\\./x\\.onnx', which climbs out",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["artifacts"][0].update(epcontext={"path": "../x.onnx"})),
            release([ctx.model_dir], tag="v1", out=ctx.tmp / "dist"),
        ),
    ),
    Case(
        "manifest of an unknown schema (99)",
        "`clip-export verify`",
        ManifestError,
        "has schema 99; this clip-export reads manifest schema 1 only",
        lambda ctx: (edit_manifest(ctx.model_dir, lambda m: m.update(schema=99)), verify(ctx.model_dir)),
    ),
    Case(
        "minimal manifest: schema and artifacts only",
        "`ClipOnnx.from_release`",
        ManifestError,
        "is missing the section\\(s\\) model, preprocess, tokenizer",
        lambda ctx: (
            (ctx.model_dir / "manifest.json").write_text('{"schema": 1, "artifacts": []}'),
            ClipOnnx.from_release(ctx.model_dir),
        ),
    ),
    Case(
        "artifact entry without a sha256",
        "`clip-export release`",
        ManifestError,
        "artifacts\\[0\\] has no sha256",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["artifacts"][0].pop("sha256")),
            release([ctx.model_dir], tag="v1", out=ctx.tmp / "dist"),
        ),
    ),
    Case(
        "a second export into the same `--out` while the first runs (two processes)",
        "`clip-export onnx`",
        CliError,
        "Error: another clip-export run \\(pid \\d+\\) is writing .*tiny-vit; wait for it to finish",
        export_while_another_export_runs,
    ),
    Case(
        "a conversion while another process writes the same directory",
        "`clip-export fp16`",
        OutputError,
        "another clip-export run \\(pid \\d+\\) is writing",
        convert_while_another_process_holds_the_lock,
    ),
    Case(
        "the disk fills while `onnx --force` replaces an export",
        "`clip-export onnx`",
        CliError,
        "Error: could not write the export of tiny-vit into .*: the disk is full; the export already there is unchanged",
        disk_fills_during_a_forced_export,
    ),
    Case(
        "`int8 --exclude` names a node no graph has",
        "`clip-export int8`",
        CliError,
        "Error: --exclude names no node of visual\\.onnx, text\\.onnx: no_such_node; their \\d+ MatMul/Gemm nodes include",
        lambda ctx: cli("int8", str(ctx.model_dir), "--exclude", "no_such_node", "-q"),
    ),
    Case(
        "`--weights` is an empty file",
        "`clip-export onnx`",
        CliError,
        "Error: .*empty\\.pt is empty \\(0 bytes\\)",
        lambda ctx: (
            (ctx.tmp / "empty.pt").write_bytes(b""),
            cli("onnx", "tiny-vit", "--weights", str(ctx.tmp / "empty.pt"), "--out", str(ctx.tmp / "out"), "-q"),
        ),
    ),
    Case(
        "`--weights` is not a checkpoint",
        "`clip-export onnx`",
        CliError,
        "Error: .*junk\\.pt is not a readable checkpoint: \\S",
        lambda ctx: (
            (ctx.tmp / "junk.pt").write_bytes(b"\x00junk" * 10),
            cli("onnx", "tiny-vit", "--weights", str(ctx.tmp / "junk.pt"), "--out", str(ctx.tmp / "out"), "-q"),
        ),
    ),
    Case(
        "`--weights` holds NaN",
        "`clip-export onnx`",
        CliError,
        "Error: the checkpoint .*nan\\.pt holds NaN or Inf values in 1 tensor\\(s\\): visual\\.proj",
        lambda ctx: cli(
            "onnx", "tiny-vit", "--weights", str(checkpoint_with_nan(ctx)), "--out", str(ctx.tmp / "out"), "-q"
        ),
    ),
    Case(
        'a bare string caption: `embed_texts("a cat")`',
        "`ClipOnnx.embed_texts`",
        None,
        'one caption: one row, the same as `["a cat"]`',
        embed_one_caption,
    ),
    Case(
        "a caption that is not a str: `embed_texts([123])`",
        "`ClipOnnx.embed_texts`",
        ClipExportError,
        "texts\\[0\\]: type int is not a caption",
        lambda ctx: ctx.runtime().embed_texts([123]),
    ),
    Case(
        "no list at all: `embed_texts(None)`",
        "`ClipOnnx.embed_texts`",
        ClipExportError,
        "texts must be one item or a list of them, not type NoneType",
        lambda ctx: ctx.runtime().embed_texts(None),
    ),
    Case(
        "the reader of a finished release's output goes away: `release … | head -1`",
        "`clip-export release`",
        None,
        "exit 0: the release is written, the closed pipe is no error",
        release_into_a_closed_pipe,
    ),
    Case(
        'an artifact of tower `"audio"`',
        "`clip-export verify`",
        ManifestError,
        "artifacts\\[0\\]\\.tower is 'audio'; a tower is one of visual, text",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["artifacts"][0].update(tower="audio")),
            verify(ctx.model_dir),
        ),
    ),
    Case(
        "`tokenizer.context_length` is -5",
        "`ClipOnnx.from_release`",
        ManifestError,
        "tokenizer\\.context_length is -5; it must be a positive number of tokens",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["tokenizer"].update(context_length=-5)),
            ClipOnnx.from_release(ctx.model_dir),
        ),
    ),
    Case(
        "`--texts` is a binary file",
        "`clip-export verify`",
        CliError,
        "Error: --texts .*captions\\.bin is not UTF-8 text",
        lambda ctx: (
            (ctx.tmp / "captions.bin").write_bytes(bytes(range(256))),
            cli("verify", str(ctx.model_dir), "--texts", str(ctx.tmp / "captions.bin"), "-q"),
        ),
    ),
    Case(
        'bytes for a caption: `embed_texts(b"a cat")`',
        "`ClipOnnx.embed_texts`",
        ClipExportError,
        "texts: bytes are not a caption; decode them to str first",
        lambda ctx: ctx.runtime().embed_texts(b"a cat"),
    ),
    Case(
        "a negative thread count: `from_release(path, threads=-3)`",
        "`ClipOnnx.from_release`",
        ClipExportError,
        "threads must be 0 \\(onnxruntime's choice\\) or a positive count, not -3",
        lambda ctx: ClipOnnx.from_release(ctx.shared_dir, threads=-3),
    ),
    Case(
        "an HxWx3 uint8 numpy array, or encoded PNG/JPEG bytes",
        "`ClipOnnx.embed_images`",
        None,
        "accepted: one row each, the same embedding",
        embed_array_and_bytes,
    ),
    Case(
        'one unreadable image in a batch: `[ok, b"junk"]`',
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "images\\[1\\]: the image of 5 bytes is in no format Pillow can decode",
        lambda ctx: ctx.runtime().embed_images([png_bytes(), b"junk!"]),
    ),
    Case(
        "a float numpy array",
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "images\\[0\\]: a numpy array of shape \\(4, 4, 3\\) and dtype float64 is not an image",
        lambda ctx: ctx.runtime().embed_images([np.zeros((4, 4, 3))]),
    ),
    Case(
        "`clip-export release .` run inside the export directory",
        "`clip-export release`",
        None,
        "accepted: assets are named after the directory (they were named `-v1`, refused as an unsafe name)",
        release_from_inside,
    ),
    Case(
        "`release --client-check require` where transformers.js is not installed",
        "`clip-export release`",
        ReleaseError,
        "--client-check require: .* is not installed",
        lambda ctx: (
            verify(ctx.model_dir),
            ctx.monkeypatch.setenv("CLIP_EXPORT_NODE_MODULES", str(ctx.tmp / "no_modules")),
            release([ctx.model_dir], tag="v1", out=ctx.tmp / "dist", client_check="require"),
        ),
    ),
    Case(
        "manifest `model.tokenizer_dir` names a directory anywhere",
        "`clip-export verify --reference torch`",
        ClipExportError,
        "exported with --tokenizer DIR, which clip-export never reads from a manifest; pass --tokenizer DIR",
        lambda ctx: (
            edit_manifest(ctx.model_dir, lambda m: m["model"].update(tokenizer_dir="/etc")),
            verify(ctx.model_dir, reference="torch", write=False),
        ),
    ),
    Case(
        "manifest `model` section edited after verify (another seed)",
        "`clip-export release`",
        ReleaseError,
        "passed 'clip-export verify' with other model, preprocessing, tokenizer or reference settings",
        lambda ctx: (
            verify(ctx.model_dir),
            edit_manifest(ctx.model_dir, lambda m: m["model"].update(seed=7)),
            release([ctx.model_dir], tag="v1", out=ctx.tmp / "dist"),
        ),
    ),
    Case(
        "a 0x0 image",
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "images\\[0\\]: the image is 0x0 pixels",
        lambda ctx: ctx.runtime().embed_images([Image.new("RGB", (0, 0))]),
    ),
    Case(
        "a PNG claiming 40000x40000 pixels (a decompression bomb)",
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "images\\[1\\]: the image of \\d+ bytes is too large to decode safely",
        lambda ctx: ctx.runtime().embed_images([png_bytes(), png_header_claiming(40000, 40000)]),
    ),
    Case(
        "a path with a NUL byte",
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "images\\[0\\]: cannot read the image .*: embedded null byte",
        lambda ctx: ctx.runtime().embed_images(["photo\x00.jpg"]),
    ),
    Case(
        "something that is no image: `embed_images([42])`",
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "images\\[0\\]: type int is not an image; pass a file path, encoded image bytes",
        lambda ctx: ctx.runtime().embed_images([42]),
    ),
    Case(
        "a photo over 24 MP (6001x4000)",
        "`ClipOnnx.embed_images`",
        None,
        'accepted: the default path runs PIL\'s own resize, as "exact" does',
        huge_photo_takes_the_exact_path,
    ),
    Case(
        "a 13400x13400 uint8 array fed straight to a preprocessing graph (no decoder in between)",
        "onnxruntime, `*.preprocessing.onnx`",
        OnnxRuntimeFail,
        "running Reshape node. Name:'clip_export_preprocess/refuse_images_over_178956970_pixels'",
        bomb_sized_array_to_the_preprocessing_graph,
    ),
    Case(
        'a tower that does not exist: `from_release(path, towers=["audio"])`',
        "`ClipOnnx.from_release`",
        ClipExportError,
        "towers must be some of visual, text, not audio",
        lambda ctx: ClipOnnx.from_release(ctx.shared_dir, towers=["audio"]),
    ),
    Case(
        'an image through a text-only runtime: `from_release(path, towers=["text"]).embed_images(...)`',
        "`ClipOnnx.embed_images`",
        ClipExportError,
        "the visual tower is not open \\(opened: text\\)",
        lambda ctx: ClipOnnx.from_release(ctx.shared_dir, towers=["text"]).embed_images(np.zeros((8, 8, 3), np.uint8)),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.bad_input[:60] for c in CASES])
def test_bad_input_gets_what_the_table_says(
    case: Case, tiny_vit_copy: Path, tiny_vit_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = Ctx(tiny_vit_copy, tmp_path, tiny_vit_dir, monkeypatch)
    if case.error is None:
        case.run(ctx)
        return
    with pytest.raises(case.error, match=case.match):
        case.run(ctx)


def test_refused_paths_say_nothing_about_the_outside_file(tiny_vit_copy: Path, tmp_path: Path) -> None:
    """With a wrong hash the old message gave the outside file's size; now nothing is read at all."""
    ctx = Ctx(tiny_vit_copy, tmp_path, tiny_vit_copy, pytest.MonkeyPatch())
    secret, record = outside_file(ctx, b"x" * 12345)
    edit_manifest(tiny_vit_copy, lambda m: m["artifacts"][0].update(path=str(secret), sha256="0" * 64, bytes=1))
    with pytest.raises(ManifestError) as caught:
        release([tiny_vit_copy], tag="v1", out=tmp_path / "dist")
    assert "12345" not in str(caught.value) and "bytes" not in str(caught.value)
    assert not (tmp_path / "dist" / "tiny-vit-v1").exists()


def render_table(cases: list[Case] = CASES) -> str:
    """The Markdown table of docs/reliability.md, from CASES."""
    rows = ["| # | bad input | where | what it gets |", "|---|---|---|---|"]
    for number, case in enumerate(cases, 1):
        outcome = f"`{case.error.__name__}`: `{case.match}`" if case.error else case.match
        if case.error is CliError:
            outcome = f"exit 1, one line: `{case.match}`"
        rows.append(f"| {number} | {case.bad_input} | {case.where} | {outcome.replace('|', '&#124;')} |")
    return "\n".join(rows)


def doc_with_table(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{render_table()}\n{END}{tail}"


def test_reliability_doc_is_current() -> None:
    text = DOC.read_text()
    assert BEGIN in text and END in text
    assert text == doc_with_table(text), "docs/reliability.md is out of date: run python tools/reliability_table.py"
