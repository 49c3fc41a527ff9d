"""The embed stage: what it writes, what a re-run does, bad items, a kill, and mixed datasets."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import BUNDLED_DIR
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import EMBED_DATA_DIR, EMBED_ERRORS_NAME, EMBED_MANIFEST_NAME, WIDEST_ACTIVATION_DETAIL
from clip_export.runtime import ClipOnnx, serving
from clip_export.stages.embed.embed import embed
from clip_export.stages.embed.embed_inputs import in_batching_order, list_items, part_rows_by_kind, part_slices
from clip_export.stages.embed.embed_store import Store, read_embeddings

from ...helpers import perturbed_release

PHOTOS = sorted((BUNDLED_DIR / "images").iterdir())


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for n, path in enumerate(PHOTOS[:8]):
        shutil.copy(path, (folder / "nested" if n % 2 else folder) / path.name)
    return folder


@pytest.fixture
def captions(tmp_path: Path) -> Path:
    path = tmp_path / "captions.txt"
    path.write_text("a cat on a sofa\na cup of coffee\nthe moon at night\n", encoding="utf-8")
    return path


def by_id(out: Path) -> dict[str, tuple[str, str, np.ndarray]]:
    table = read_embeddings(out).to_pylist()
    ids = [row["id"] for row in table]
    assert len(ids) == len(set(ids)), "an id appears twice in the dataset"
    return {row["id"]: (row["kind"], row["sha256"], np.asarray(row["embedding"], dtype=np.float32)) for row in table}


def manifest_runs(out: Path) -> list[dict[str, object]]:
    return json.loads((out / EMBED_MANIFEST_NAME).read_text(encoding="utf-8"))["runs"]


def test_images_and_captions_become_normalised_rows_with_the_runtimes_embeddings(
    tiny_vit_int8_dir: Path, photos: Path, captions: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    result = embed(tiny_vit_int8_dir, [photos, captions], out, batch_size=3, chunk_rows=5)
    assert (result.items, result.embedded, result.unchanged, result.failed) == (11, 11, 0, 0)
    assert result.precision == "int8" and "fastest that holds here" in result.why_this_artifact
    assert result.chunks_written == 3 and len(list((out / EMBED_DATA_DIR).glob("part-*.parquet"))) == 3
    np.testing.assert_allclose(np.linalg.norm(np.stack([r[2] for r in by_id(out).values()]), axis=1), 1.0, atol=1e-5)
    # fp32 rows are the runtime's own embeddings; INT8 ones depend on their batch-mates (dynamic
    # quantization scales activations per batch), so they are compared at fp32 here.
    exact = tmp_path / "fp32"
    embed(tiny_vit_int8_dir, [photos, captions], exact, precision="fp32", batch_size=3, chunk_rows=5)
    rows = by_id(exact)
    model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32")
    images = sorted(str(p) for p in photos.rglob("*") if p.is_file())
    np.testing.assert_allclose(np.stack([rows[i][2] for i in images]), model.embed_images(images), atol=1e-5)
    texts = [rows[f"{captions}#{n}"] for n in (1, 2, 3)]
    np.testing.assert_allclose(
        np.stack([t[2] for t in texts]), model.embed_texts(captions.read_text().splitlines()), atol=1e-5
    )
    assert {t[0] for t in texts} == {"text"} and {rows[i][0] for i in images} == {"image"}
    manifest = Store(out).manifest
    assert manifest is not None and manifest["artifact"]["precision"] == "int8"
    assert set(manifest["artifact"]["onnx"]) == {"visual", "text"} and manifest["artifact"]["environment"]["key"]
    assert manifest["runs"][-1]["embedded"] == 11


def test_a_captions_only_run_opens_only_the_text_tower_and_keeps_the_pairs_key(
    tiny_vit_int8_dir: Path, photos: Path, captions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    both = embed(tiny_vit_int8_dir, [photos, captions], tmp_path / "both", precision="fp32")
    opened: list[str] = []
    real_open = serving.open_runner
    monkeypatch.setattr(
        serving,
        "open_runner",
        lambda root, entry, *a, **k: opened.append(entry.tower) or real_open(root, entry, *a, **k),
    )
    out = tmp_path / "grown"
    first = embed(tiny_vit_int8_dir, [captions], out, precision="fp32")
    assert opened == ["text"]  # a captions-only index never loads or checks the image tower
    second = embed(tiny_vit_int8_dir, [photos, captions], out, precision="fp32")
    assert (second.embedded, second.unchanged, second.compat) == (8, 3, None)  # same artifact: no compat check
    assert first.artifact_key == second.artifact_key == both.artifact_key
    manifest = Store(out).manifest
    assert manifest is not None and set(manifest["artifact"]["onnx"]) == {"visual", "text"}


def test_an_empty_folder_embeds_nothing_and_opens_every_tower(tiny_vit_int8_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = embed(tiny_vit_int8_dir, [tmp_path / "empty"], tmp_path / "index", precision="fp32")
    assert (result.items, result.embedded, result.failed) == (0, 0, 0)
    manifest = Store(tmp_path / "index").manifest
    assert manifest is not None and set(manifest["artifact"]["onnx"]) == {"visual", "text"}


def test_captions_of_a_similar_length_share_a_batch(
    tiny_vit_int8_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text graph runs each batch to its longest caption: a long caption listed first must not
    make the short ones after it pay for its length."""
    lines = ["a photograph of a very long caption that goes on and on about a cat", "a cat", "a dog", "the sea"]
    captions = tmp_path / "mixed.txt"
    captions.write_text("\n".join(lines) + "\n", encoding="utf-8")
    batches: list[np.ndarray] = []
    original = ClipOnnx.embed_token_ids

    def recording(self: ClipOnnx, ids: np.ndarray, normalize: bool = True) -> np.ndarray:
        batches.append(np.array(ids))
        return original(self, ids, normalize)

    monkeypatch.setattr(ClipOnnx, "embed_token_ids", recording)
    out = tmp_path / "index"
    # threads=1: one batch at a time, whole (by default each batch is split into parts, one per core at once)
    result = embed(tiny_vit_int8_dir, [captions], out, precision="fp32", batch_size=2, threads=1)
    assert result.embedded == 4
    monkeypatch.setattr(ClipOnnx, "embed_token_ids", original)
    model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="fp32")
    expected = [model.tokenize(["a cat", "a dog"]), model.tokenize(["the sea", lines[0]])]
    assert len(batches) == 2 and all(np.array_equal(got, want) for got, want in zip(batches, expected))
    rows = by_id(out)
    for n, line in enumerate(lines, start=1):  # each row is its own caption's embedding, whatever its batch
        np.testing.assert_allclose(rows[f"{captions}#{n}"][2], model.embed_texts([line])[0], atol=1e-5)


def test_by_default_parts_hold_at_most_the_towers_part_rows_and_threads_run_whole_batches(
    tiny_vit_int8_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.stages.embed import embed_inputs

    # a budget that holds 3 rows of the tiny image tower's widest activation, as export recorded it
    widest = read_manifest(tiny_vit_int8_dir).find(tower="visual", precision="fp32").detail(WIDEST_ACTIVATION_DETAIL)
    monkeypatch.setattr(embed_inputs, "EMBED_PART_ACTIVATIONS", 3 * widest + widest // 2)
    photos = tmp_path / "photos"
    photos.mkdir()
    count = 2 * 3 + 1  # one part per core on 2 cores would be 4 + 3
    for path in PHOTOS[:count]:
        shutil.copy(path, photos / path.name)
    parts: list[int] = []
    original = ClipOnnx.embed_pixels

    def recording(self: ClipOnnx, pixels: np.ndarray) -> np.ndarray:
        parts.append(len(pixels))  # list.append is atomic: the workers call this concurrently
        return original(self, pixels)

    monkeypatch.setattr(ClipOnnx, "embed_pixels", recording)
    embed(tiny_vit_int8_dir, [photos], tmp_path / "default", precision="fp32", batch_size=count)
    assert sorted(parts) == [2, 2, 3]
    assert Store(tmp_path / "default").manifest["runs"][-1]["layout"]["part_rows_at_most"]["image"] == 3
    parts.clear()
    embed(tiny_vit_int8_dir, [photos], tmp_path / "threads", precision="fp32", batch_size=count, threads=1)
    assert parts == [count]


def test_each_run_records_the_layout_its_int8_rows_can_be_computed_again_from(
    tiny_vit_int8_dir: Path, photos: Path, captions: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """INT8 rows depend on the part of a batch they ran in: a first run's record in dataset.json must be
    enough to get the same rows again, kind by kind and part by part, through the runtime alone."""
    from clip_export.stages.embed import embed as embed_module

    # three parts at once whatever this machine's cores, so that the default layout differs from --threads 1
    monkeypatch.setattr(embed_module, "parallelism", lambda threads: (threads, 1) if threads else (1, 3))
    items = in_batching_order(list_items([photos, captions]))
    part_rows = part_rows_by_kind(read_manifest(tiny_vit_int8_dir))  # what the default layout caps parts at
    runs: dict[int, dict[str, tuple[str, str, np.ndarray]]] = {}
    for threads in (0, 1):
        out = tmp_path / f"threads-{threads}"
        embed(tiny_vit_int8_dir, [photos, captions], out, precision="int8", batch_size=5, threads=threads)
        manifest = Store(out).manifest
        assert manifest is not None
        layout, rows = manifest["runs"][-1]["layout"], by_id(out)
        runs[threads] = rows
        assert (layout["batch_size"], layout["parts_at_least"]) == (5, 1 if threads else 3)
        assert (layout["part_rows_at_most"], layout["session_threads"]) == (None if threads else part_rows, 1)
        model = ClipOnnx.from_release(tiny_vit_int8_dir, precision="int8", threads=layout["session_threads"])
        for kind, run in (("image", model.embed_images), ("text", model.embed_texts)):
            of_kind = [item for item in items if item.kind == kind]
            for start in range(0, len(of_kind), layout["batch_size"]):
                batch = of_kind[start : start + layout["batch_size"]]
                most_rows = layout["part_rows_at_most"][kind] if layout["part_rows_at_most"] else None
                for part in part_slices(len(batch), layout["parts_at_least"], most_rows):
                    np.testing.assert_allclose(
                        np.stack([rows[item.id][2] for item in batch[part]]),
                        run([str(item.path) if kind == "image" else str(item.text) for item in batch[part]]),
                        atol=1e-6,
                    )
    # and the layout matters: the two runs' INT8 rows are not the same
    assert max(float(np.abs(runs[0][key][2] - runs[1][key][2]).max()) for key in runs[0]) > 1e-4


def test_a_rerun_embeds_only_new_or_changed_items(tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "index"
    embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    before = by_id(out)
    again = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (again.embedded, again.unchanged, again.chunks_written) == (0, 8, 0)
    changed = next(p for p in photos.glob("*.jpg"))
    Image.open(changed).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(changed)
    shutil.copy(PHOTOS[10], photos / "new.jpg")
    third = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (third.embedded, third.unchanged) == (2, 7)
    after = by_id(out)
    assert set(after) == set(before) | {str(photos / "new.jpg")}
    assert after[str(changed)][1] != before[str(changed)][1]
    assert not np.allclose(after[str(changed)][2], before[str(changed)][2])
    untouched = [k for k in before if k != str(changed)]
    assert all(np.array_equal(after[k][2], before[k][2]) for k in untouched)


@pytest.mark.usefixtures("file_stats_at_once")
def test_a_rerun_does_not_read_files_whose_stat_is_as_it_last_saw_them(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.stages.embed import embed_inputs

    read: list[str] = []
    real_load = embed_inputs.load
    monkeypatch.setattr(embed_inputs, "load", lambda item: read.append(item.id) or real_load(item))
    out = tmp_path / "index"
    first = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (first.embedded, first.unchanged_unread, len(read)) == (8, 0, 8)
    read.clear()
    again = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (again.embedded, again.unchanged, again.unchanged_unread, read) == (0, 8, 8, [])
    assert manifest_runs(out)[-1]["unchanged_unread"] == 8
    # Another photo of the same size with its mtime put back: its ctime gives it away, so it is read.
    swapped = next(p for p in photos.glob("*.jpg"))
    content, mtime = swapped.read_bytes(), swapped.stat().st_mtime_ns
    time.sleep(0.01)  # past the file system's timestamp tick
    swapped.write_bytes(content[:-2] + bytes([content[-2] ^ 1]) + content[-1:])
    os.utime(swapped, ns=(mtime, mtime))
    third = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (third.embedded, third.unchanged_unread, read) == (1, 7, [str(swapped)])
    read.clear()
    rehashed = embed(tiny_vit_int8_dir, [photos], out, precision="fp32", rehash=True)  # reads every file
    assert (rehashed.embedded, rehashed.unchanged, rehashed.unchanged_unread, len(read)) == (0, 8, 0, 8)


@pytest.mark.usefixtures("file_stats_at_once")
def test_the_stat_is_taken_before_the_read_and_a_file_that_failed_is_read_again(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.stages.embed import embed_inputs

    target = next(p for p in photos.glob("*.jpg"))
    content, mtime = target.read_bytes(), target.stat().st_mtime_ns
    real_load = embed_inputs.load

    def rewritten_after_read(item: embed_inputs.Item) -> embed_inputs.Loaded:
        loaded = real_load(item)
        if item.path == str(target) and loaded.content == content:  # changed while the run holds it
            time.sleep(0.01)  # past the file system's timestamp tick
            target.write_bytes(content[:-2] + bytes([content[-2] ^ 1]) + content[-1:])
            os.utime(target, ns=(mtime, mtime))
        return loaded

    monkeypatch.setattr(embed_inputs, "load", rewritten_after_read)
    out = tmp_path / "index"
    assert embed(tiny_vit_int8_dir, [photos], out, precision="fp32").embedded == 8
    monkeypatch.setattr(embed_inputs, "load", real_load)
    again = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")  # the entry predates the rewrite
    assert (again.embedded, again.unchanged_unread) == (1, 7)
    time.sleep(0.01)
    target.write_bytes(bytes(len(content)))  # undecodable now, same size, mtime put back
    os.utime(target, ns=(mtime, mtime))
    for _ in range(2):  # a failed file keeps no entry: each run reads it again and says why
        failing = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
        assert (failing.failed, failing.unchanged_unread, failing.errors[0][0]) == (1, 7, str(target))


@pytest.mark.usefixtures("file_stats_at_once")
def test_a_rerun_with_nothing_to_read_starts_no_engine(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.stages.embed import embed as embed_module
    from clip_export.stages.embed import embed_ray

    out = tmp_path / "index"
    embed(tiny_vit_int8_dir, [photos], out, precision="fp32")

    def started(*_: object, **__: object) -> None:
        raise AssertionError("an engine started with nothing to read")

    monkeypatch.setattr(embed_module, "run_local", started)
    monkeypatch.setattr(embed_ray, "run_ray", started)
    said: list[str] = []
    for use_ray in (False, True):
        again = embed(tiny_vit_int8_dir, [photos], out, precision="fp32", use_ray=use_ray, progress=said.append)
        assert (again.embedded, again.unchanged, again.unchanged_unread) == (0, 8, 8)
    assert said.count("nothing to read or embed (8 of 8 items unchanged by their stat)") == 2


def test_photos_written_just_before_a_run_are_read_again_by_the_next(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from clip_export.stages.embed import embed_filestats

    # However slowly this machine opens the model, the fixture's photos are younger than this
    monkeypatch.setattr(embed_filestats, "EMBED_FILE_STATS_SETTLE_S", 600.0)
    out = tmp_path / "index"
    embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    again = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (again.embedded, again.unchanged, again.unchanged_unread) == (0, 8, 0)


def test_bad_items_go_to_the_errors_table_and_the_rest_is_embedded(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path
) -> None:
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "truncated.jpg").write_bytes(PHOTOS[0].read_bytes()[:2000])
    (photos / "not-an-image.png").write_bytes(b"hello, world")
    Image.new("1", (20000, 20000)).save(photos / "bomb.png")  # 400 Mpx in a few KiB
    out = tmp_path / "index"
    result = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert (result.embedded, result.failed) == (8, 4)
    import pyarrow.parquet as pq

    errors = {Path(r["id"]).name: r["reason"] for r in pq.read_table(out / EMBED_ERRORS_NAME).to_pylist()}
    assert errors["empty.jpg"] == "the file is empty (0 bytes)"
    assert "truncated" in errors["truncated.jpg"]
    assert "no format Pillow can decode" in errors["not-an-image.png"]
    assert "decompression" in errors["bomb.png"] or "too large" in errors["bomb.png"]
    assert len(by_id(out)) == 8
    for name in ("empty.jpg", "truncated.jpg", "not-an-image.png", "bomb.png"):
        (photos / name).unlink()
    clean = embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    assert clean.failed == 0 and not (out / EMBED_ERRORS_NAME).exists()


def test_a_dataset_is_extended_by_an_interchangeable_artifact_and_refuses_another(
    tiny_vit_int8_dir: Path, tiny_vit_copy: Path, photos: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    extended = embed(tiny_vit_int8_dir, [photos], out, precision="int8")
    assert extended.compat is not None and extended.compat.verdict == "interchangeable"
    assert extended.unchanged == 8  # fp32 rows are kept: int8 was found interchangeable with them
    perturbed_release(tiny_vit_copy)
    with pytest.raises(ClipExportError, match="refusing to extend .*re-index needed.*--reembed"):
        embed(tiny_vit_copy, [photos], out, precision="fp32")
    before = by_id(out)
    replaced = embed(tiny_vit_copy, [photos], out, precision="fp32", reembed=True)
    assert replaced.embedded == 8
    after = by_id(out)
    assert set(after) == set(before) and all(not np.allclose(after[k][2], before[k][2]) for k in after)
    manifest = Store(out).manifest
    assert manifest is not None and manifest["artifact"]["key"] == replaced.artifact_key and manifest["accepted"] == []


def test_a_captions_only_extension_is_checked_on_every_tower_its_key_names(
    tiny_vit_int8_dir: Path, photos: Path, captions: Path, tmp_path: Path
) -> None:
    """The accepted key names both towers, so photos added later skip the check: the check that
    accepted it must have compared the image tower too, though this run opened only the text one."""
    out = tmp_path / "index"
    embed(tiny_vit_int8_dir, [photos, captions], out, precision="fp32")
    extended = embed(tiny_vit_int8_dir, [captions], out, precision="int8")
    assert extended.compat is not None and extended.compat.verdict == "interchangeable"
    names = {m.name for m in extended.compat.metrics}
    assert any(n.startswith("visual") or n.startswith("image") for n in names), names
    assert any(n.startswith("text") for n in names), names


def test_a_dataset_of_another_model_is_refused_in_one_line(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path
) -> None:
    import json

    out = tmp_path / "index"
    embed(tiny_vit_int8_dir, [photos], out, precision="fp32")
    manifest = json.loads((out / EMBED_MANIFEST_NAME).read_text())
    manifest["artifact"].update(key="other", model={"arch": "ViT-L-14"})
    (out / EMBED_MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ClipExportError, match="built by ViT-L-14 .* different embedding spaces never share an index"):
        embed(tiny_vit_int8_dir, [photos], out, precision="fp32")


def test_an_output_directory_that_is_not_a_dataset_is_refused(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path
) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "thesis.tex").write_text("x")
    with pytest.raises(ClipExportError, match="not an embeddings dataset"):
        embed(tiny_vit_int8_dir, [photos], tmp_path / "busy")


def test_sigkill_loses_at_most_the_chunk_in_flight_and_a_rerun_completes_it(
    tiny_vit_int8_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for copy in range(8):
        for path in PHOTOS:
            shutil.copy(path, folder / f"{copy}-{path.name}")
    out = tmp_path / "index"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    command = [
        sys.executable,
        "-m",
        "clip_export.cli",
        "embed",
        str(tiny_vit_int8_dir),
        str(folder),
        "--out",
        str(out),
        "--precision",
        "fp32",
        "--batch-size",
        "2",
        "--chunk-rows",
        "4",
        "--quiet",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and len(list((out / EMBED_DATA_DIR).glob("part-*.parquet"))) < 3
        and process.poll() is None
    ):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed: give it more items"
    import pyarrow.parquet as pq

    parts = sorted((out / EMBED_DATA_DIR).glob("part-*.parquet"))
    assert parts and all(pq.read_table(p).num_rows == 4 for p in parts)  # every visible chunk is whole
    kept = len(by_id(out))
    total = 8 * len(PHOTOS)
    assert 0 < kept < total
    resumed = embed(tiny_vit_int8_dir, [folder], out, precision="fp32", batch_size=8, chunk_rows=64)
    assert (resumed.unchanged, resumed.embedded) == (kept, total - kept)
    assert not list((out / EMBED_DATA_DIR).glob(".*.tmp"))
    rows = by_id(out)
    clean = tmp_path / "clean"
    embed(tiny_vit_int8_dir, [folder], clean, precision="fp32", batch_size=8, chunk_rows=64)
    reference = by_id(clean)
    assert set(rows) == set(reference)
    for key, (_, sha, vector) in rows.items():  # batch size does not change an embedding beyond float noise
        assert sha == reference[key][1]
        np.testing.assert_allclose(vector, reference[key][2], atol=1e-5)


def test_ray_missing_names_the_extra(
    tiny_vit_int8_dir: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray now fails, as where it is not installed
    with pytest.raises(ClipExportError, match=r"pip install 'clip-export\[ray\]'"):
        embed(tiny_vit_int8_dir, [photos], tmp_path / "index", precision="fp32", use_ray=True)
