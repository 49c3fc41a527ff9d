"""The reader: which INPUTs become which items, and how content is read and hashed."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clip_export.core.artifact import Manifest
from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import BUNDLED_DIR
from clip_export.core.manifest import read_manifest
from clip_export.core.spec import EMBED_PART_ACTIVATIONS, EMBED_PART_ROWS, WIDEST_ACTIVATION_DETAIL
from clip_export.runtime import ClipOnnx
from clip_export.stages.embed.embed_inputs import (
    Item,
    in_batching_order,
    list_items,
    load,
    part_rows_by_kind,
    part_slices,
    prepare,
)

PHOTOS = sorted((BUNDLED_DIR / "images").glob("*.jpg"))[:3]


def test_folders_are_walked_recursively_by_extension_and_hidden_paths_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / ".cache").mkdir()
    shutil.copy(PHOTOS[0], tmp_path / "top.jpg")
    shutil.copy(PHOTOS[1], tmp_path / "a" / "b" / "deep.JPG")
    shutil.copy(PHOTOS[2], tmp_path / ".cache" / "hidden.jpg")
    (tmp_path / "notes.md").write_text("not an image")
    items = list_items([tmp_path])
    assert [Path(i.id).name for i in items] == ["deep.JPG", "top.jpg"]
    assert {i.kind for i in items} == {"image"}


def test_a_text_file_is_one_caption_a_line_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    captions = tmp_path / "captions.txt"
    captions.write_text("a cat\n\n  \na dog on a beach\n", encoding="utf-8")
    items = list_items([captions])
    assert [(i.id, i.kind, i.text) for i in items] == [
        (f"{captions}#1", "text", "a cat"),
        (f"{captions}#4", "text", "a dog on a beach"),
    ]


def test_tables_give_paths_bytes_or_captions_by_column(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copy(PHOTOS[0], tmp_path / "one.jpg")
    data = PHOTOS[1].read_bytes()
    pq.write_table(pa.table({"file": ["one.jpg"], "blob": [data], "caption": ["a photo"]}), tmp_path / "t.parquet")
    paths = list_items([tmp_path / "t.parquet"], column="file")
    assert [(i.id, i.kind) for i in paths] == [(str(tmp_path / "one.jpg"), "image")]  # relative to the table
    blobs = list_items([tmp_path / "t.parquet"], column="blob")
    assert blobs[0].kind == "image" and blobs[0].data == data and blobs[0].id == f"{tmp_path / 't.parquet'}#0"
    (tmp_path / "t.csv").write_text("caption,n\na red car,1\na blue sky,2\n")
    assert [i.text for i in list_items([tmp_path / "t.csv"], column="caption")] == ["a red car", "a blue sky"]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({"caption": c}) for c in ["x y", "z"]) + "\n")
    assert [(i.kind, i.text) for i in list_items([tmp_path / "t.jsonl"], column="caption")] == [
        ("text", "x y"),
        ("text", "z"),
    ]


def test_a_table_without_the_column_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("caption\nx\n")
    with pytest.raises(ClipExportError, match="--column"):
        list_items([tmp_path / "t.csv"])
    with pytest.raises(ClipExportError, match="no column 'path'; it has: caption"):
        list_items([tmp_path / "t.csv"], column="path")


def test_unknown_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ClipExportError, match="no such file or folder"):
        list_items([tmp_path / "missing"])
    (tmp_path / "x.doc").write_text("?")
    with pytest.raises(ClipExportError, match=".doc is not an input"):
        list_items([tmp_path / "x.doc"])
    with pytest.raises(ClipExportError, match="at least one INPUT"):
        list_items([])


def test_load_hashes_the_content_and_names_empty_or_unreadable_files(tmp_path: Path) -> None:
    shutil.copy(PHOTOS[0], tmp_path / "a.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    items = {Path(i.id).name: i for i in list_items([tmp_path])}
    good = load(items["a.jpg"])
    assert good.error is None and good.sha256 == hashlib.sha256(PHOTOS[0].read_bytes()).hexdigest()
    assert load(items["empty.jpg"]).error == "the file is empty (0 bytes)"
    (tmp_path / "a.jpg").unlink()
    assert "cannot read" in (load(items["a.jpg"]).error or "")


def test_captions_are_batched_shortest_first_and_images_keep_their_order(tmp_path: Path) -> None:
    shutil.copy(PHOTOS[1], tmp_path / "b.jpg")
    shutil.copy(PHOTOS[0], tmp_path / "a.jpg")
    captions = tmp_path / "captions.txt"
    captions.write_text("a long caption about a cat\na dog\nthe sea\na cat\n", encoding="utf-8")
    items = list_items([tmp_path, captions])
    ordered = in_batching_order(items)
    assert sorted(i.id for i in ordered) == sorted(i.id for i in items)  # nothing lost, nothing added
    assert [i.id for i in ordered if i.kind == "image"] == [i.id for i in items if i.kind == "image"]
    assert ordered[0].kind == "image" and ordered[1].kind == "image"
    # Shortest first; "a dog" and "a cat" tie at 5 characters and keep their listed order.
    assert [i.text for i in ordered[2:]] == ["a dog", "a cat", "the sea", "a long caption about a cat"]


def test_prepare_tokenizes_captions_and_preprocesses_images_in_the_worker(tiny_vit_dir: Path) -> None:
    """The inference loop only stacks rows: a caption arrives as the runtime's own token ids, a photo
    as its pixel values, and either embeds as the runtime embeds the raw item."""
    model = ClipOnnx.from_release(tiny_vit_dir, check="off")
    caption = prepare(model, Item("c#1", "text", text="a cat on a sofa"), lambda loaded: False)
    photo = prepare(model, Item(str(PHOTOS[0]), "image", path=str(PHOTOS[0])), lambda loaded: False)
    np.testing.assert_array_equal(caption.array, model.tokenize(["a cat on a sofa"])[0])
    np.testing.assert_allclose(
        model.embed_token_ids(caption.array[None]), model.embed_texts(["a cat on a sofa"]), atol=1e-6
    )
    np.testing.assert_allclose(model.embed_pixels(photo.array[None]), model.embed_images([PHOTOS[0]]), atol=1e-6)
    assert prepare(model, Item("c#1", "text", text="a cat on a sofa"), lambda loaded: True).skip


def sizes(slices: list[slice]) -> list[int]:
    return [part.stop - part.start for part in slices]


def test_a_batch_splits_into_a_part_per_worker_and_no_part_over_the_most_rows() -> None:
    assert sizes(part_slices(10, 2)) == [5, 5]
    assert sizes(part_slices(50, 2)) == [25, 25]
    assert sizes(part_slices(1, 2)) == [1]  # fewer parts than workers when the batch is smaller
    assert part_slices(0, 2, EMBED_PART_ROWS) == []  # an empty batch has no part
    assert sizes(part_slices(50, 2, EMBED_PART_ROWS)) == [8, 7, 7, 7, 7, 7, 7]  # ceil(50 / 8) parts, even
    assert sizes(part_slices(10, 2, EMBED_PART_ROWS)) == [5, 5]  # still one part per worker
    for count in range(1, 120):  # contiguous, every row once, none over the cap, sizes within one
        parts = part_slices(count, 3, EMBED_PART_ROWS)
        assert parts[0].start == 0 and parts[-1].stop == count
        assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
        assert max(sizes(parts)) <= EMBED_PART_ROWS and max(sizes(parts)) - min(sizes(parts)) <= 1


def with_widest(manifest: Manifest, widest: dict[str, int | None]) -> Manifest:
    """The manifest with each tower's recorded widest activation per row set (None: not recorded)."""
    entries = []
    for entry in manifest.artifacts:
        details = {k: v for k, v in entry.details.items() if k != WIDEST_ACTIVATION_DETAIL}
        if widest[entry.tower] is not None and entry.precision == "fp32":
            details[WIDEST_ACTIVATION_DETAIL] = widest[entry.tower]
        entries.append(dataclasses.replace(entry, details=details))
    return Manifest(entries, manifest.sections)


def test_parts_are_sized_by_each_towers_widest_activation_as_its_export_recorded(tiny_vit_dir: Path) -> None:
    manifest = read_manifest(tiny_vit_dir)
    # tiny-vit (tests/configs): 64-pixel images in 16-pixel patches and a 77-token context, width 64, MLP 4x
    tiny = {"visual": (1 + (64 // 16) ** 2) * 4 * 64, "text": 77 * 4 * 64}
    recorded = {e.tower: e.detail(WIDEST_ACTIVATION_DETAIL) for e in manifest.artifacts if e.precision == "fp32"}
    assert recorded == tiny  # export measured each tower's MLP, its widest tensor
    assert part_rows_by_kind(manifest) == {
        "image": EMBED_PART_ACTIVATIONS // tiny["visual"],
        "text": EMBED_PART_ACTIVATIONS // tiny["text"],
    }
    # ViT-B/32's image tower (50 tokens, MLP 3072) keeps 8 rows, ViT-L/14's (257 tokens, MLP 4096) runs one row a part
    vit_b_32, vit_l_14 = 50 * 3072, 257 * 4096
    assert part_rows_by_kind(with_widest(manifest, {"visual": vit_b_32, "text": vit_l_14})) == {"image": 8, "text": 1}
    # an export that did not record it keeps the one cap
    assert part_rows_by_kind(with_widest(manifest, {"visual": None, "text": None})) == {
        "image": EMBED_PART_ROWS,
        "text": EMBED_PART_ROWS,
    }
