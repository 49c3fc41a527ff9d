from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from clip_export import export_onnx, load_model, resolve
from clip_export.core.errors import ExportParityError, OutputError, UnsupportedOpsetError
from clip_export.core.manifest import integrity_problems, read_manifest
from clip_export.core.sessions import create_session
from clip_export.core.spec import EXPORT_PARITY_TOLERANCE, TOWERS
from clip_export.stages import export as export_mod


def _run(path: Path, tower: str, inputs: np.ndarray) -> np.ndarray:
    return create_session(path).run(None, {TOWERS[tower].input_name: inputs})[0]


def test_manifest_describes_every_artifact(tiny_vit_dir: Path) -> None:
    manifest = read_manifest(tiny_vit_dir)
    assert manifest.section("model")["arch"] == "tiny-vit" and manifest.section("model")["random_init"] is True
    assert manifest.section("preprocess")["image_size"] == [64, 64]
    vocab = manifest.section("tokenizer").pop("file")
    assert manifest.section("tokenizer") == {
        "context_length": 77,
        "sot_token_id": 49406,
        "eot_token_id": 49407,
        "kind": "clip-bpe",
        "pad_token_id": 0,
        "vocab_size": 49408,
        "clean": "lower",
        "language": None,
    }
    assert vocab["path"] == "tokenizer.json" and vocab["bytes"] == (tiny_vit_dir / vocab["path"]).stat().st_size
    assert manifest.section("model")["family"] == "clip" and manifest.section("model")["reparameterized_modules"] == 0
    assert {"torch", "open_clip", "onnx", "onnxruntime"} <= set(manifest.section("versions"))
    by_tower = {a.tower: a for a in manifest.artifacts}
    assert set(by_tower) == {"visual", "text"}
    visual = by_tower["visual"]
    assert [t.to_json() for t in visual.inputs] == [
        {"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 64, 64]}
    ]
    assert [t.to_json() for t in visual.outputs] == [
        {"name": "image_embeds", "dtype": "float32", "shape": ["batch", 32]}
    ]
    assert by_tower["text"].inputs[0].dtype == "int64"
    for entry in manifest.artifacts:
        assert entry.precision == "fp32" and entry.format == "onnx" and entry.opset == 20
        assert entry.detail("export_parity")["mean_abs_normalized"] <= EXPORT_PARITY_TOLERANCE
        assert integrity_problems(tiny_vit_dir, entry) == []
    assert not integrity_problems(tiny_vit_dir, manifest.section_file("reference", "here"))


def test_onnx_files_describe_themselves(tiny_vit_dir: Path) -> None:
    model = onnx.load(str(tiny_vit_dir / "text.onnx"), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["clip_export.tower"] == "text" and props["clip_export.precision"] == "fp32"
    assert json.loads(props["clip_export.model"])["arch"] == "tiny-vit"
    assert json.loads(props["clip_export.core.tokenizer"])["eot_token_id"] == 49407
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("tower", ["visual", "text"])
def test_dynamic_batch_through_one_session(tiny_vit_dir: Path, tower: str) -> None:
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    session = create_session(tiny_vit_dir / f"{tower}.onnx")
    name = TOWERS[tower].input_name
    batch3 = export_mod.example_input(loaded, tower, 3, seed=5)
    out3 = session.run(None, {name: batch3})[0]
    out1 = session.run(None, {name: batch3[1:2]})[0]
    assert out3.shape == (3, 32) and out1.shape == (1, 32)
    np.testing.assert_allclose(out1[0], out3[1], atol=1e-5)
    expected = export_mod.torch_embed(loaded, tower, batch3, normalize=False)
    np.testing.assert_allclose(out3, expected, atol=1e-4)


def test_text_tower_pools_at_eot_on_integer_ids(tiny_vit_dir: Path) -> None:
    """Moving the EOT token changes the embedding; tokens after EOT do not."""
    ids = np.zeros((3, 77), dtype=np.int64)
    ids[:, 0] = 49406
    ids[:, 1:4] = [320, 1125, 539]
    ids[0, 4] = 49407
    ids[1, 1:5] = [320, 1125, 539, 2368]
    ids[1, 5] = 49407
    ids[2] = ids[0]
    ids[2, 10:12] = [1000, 2000]  # after EOT: ignored by the causal mask and the pooling
    out = _run(tiny_vit_dir / "text.onnx", "text", ids)
    assert not np.allclose(out[0], out[1])
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    onnx_model = onnx.load(str(tiny_vit_dir / "text.onnx"))
    argmax_inputs = [n.input[0] for n in onnx_model.graph.node if n.op_type == "ArgMax"]
    assert argmax_inputs, "EOT pooling should be an ArgMax over the integer ids"


def test_resnet_towers_export_with_parity(tmp_path: Path) -> None:
    result = export_onnx(resolve("tiny-rn", random_init=True), out=tmp_path)
    assert {t.tower for t in result.towers} == {"visual", "text"}
    assert all(t.parity_mean_abs <= EXPORT_PARITY_TOLERANCE for t in result.towers)


def test_normalize_bakes_l2_norm(tmp_path: Path) -> None:
    result = export_onnx(resolve("tiny-vit", random_init=True), out=tmp_path, towers=["visual"], normalize=True)
    out = _run(
        result.model_dir / "visual.onnx",
        "visual",
        np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32),
    )
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, atol=1e-5)
    assert read_manifest(result.model_dir).normalize is True


def test_external_data_loads_from_any_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = export_onnx(
        resolve("tiny-vit", random_init=True), out=tmp_path / "out", towers=["visual"], external_data=True
    )
    manifest = read_manifest(result.model_dir)
    entry = manifest.artifacts[0]
    assert [d.path for d in entry.external_data] == ["visual.onnx.data"]
    assert entry.bytes < entry.external_data[0].bytes
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = create_session(result.model_dir / "visual.onnx").run(
        None, {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)}
    )[0]
    assert out.shape == (1, 32) and np.isfinite(out).all()


def test_existing_output_needs_force(tiny_vit_copy: Path) -> None:
    spec = resolve("tiny-vit", random_init=True)
    with pytest.raises(OutputError, match="--force"):
        export_onnx(spec, out=tiny_vit_copy.parent)
    before = read_manifest(tiny_vit_copy).section("created")
    export_onnx(spec, out=tiny_vit_copy.parent, towers=["visual"], force=True)
    after = read_manifest(tiny_vit_copy)
    assert [a.tower for a in after.artifacts] == ["visual"] and not (tiny_vit_copy / "text.onnx").exists()
    assert after.section("created") >= before


def test_failed_export_leaves_nothing_that_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_parity(*args: object, **kwargs: object) -> tuple[float, float]:
        return 1.0, 2.0

    monkeypatch.setattr(export_mod, "parity_check", broken_parity)
    with pytest.raises(ExportParityError, match="differs from torch fp32"):
        export_onnx(resolve("tiny-vit", random_init=True), out=tmp_path)
    assert os.listdir(tmp_path) == []


def test_interrupted_export_keeps_the_previous_artifacts(tiny_vit_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(export_mod, "compute_reference", interrupted)
    before = read_manifest(tiny_vit_copy)
    with pytest.raises(KeyboardInterrupt):
        export_onnx(resolve("tiny-vit", random_init=True), out=tiny_vit_copy.parent, force=True)
    assert read_manifest(tiny_vit_copy) == before
    assert sorted(p.name for p in tiny_vit_copy.parent.iterdir()) == [tiny_vit_copy.name]


def test_unsupported_opset(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedOpsetError, match="opset 9"):
        export_onnx(resolve("tiny-vit", random_init=True), out=tmp_path, opset=9)


def test_unwritable_out(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="not writable"):
        export_onnx(resolve("tiny-vit", random_init=True), out=blocker / "sub")


def test_a_killed_export_leaves_only_a_hidden_staging_dir_that_is_cleared(tmp_path: Path) -> None:
    """SIGKILL mid-export: nothing under OUT looks complete, verify ignores the leftover, and the
    next export removes it."""
    import signal
    import subprocess
    import sys
    import time

    from clip_export.core.errors import ManifestError
    from clip_export.core.manifest import model_dirs

    script = (
        "import open_clip, sys\n"
        f"open_clip.add_model_config({str(Path(__file__).resolve().parents[1] / 'configs')!r})\n"
        "import clip_export.stages.export as e\n"
        "from clip_export import export_onnx, resolve\n"
        "def stall(*a, **k):\n"
        "    print('staged', flush=True)\n"
        "    import time; time.sleep(60)\n"
        "e.compute_reference = stall\n"
        f"export_onnx(resolve('tiny-vit', random_init=True), out={str(tmp_path)!r})\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "staged"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    leftovers = list(tmp_path.iterdir())
    # the staging dir, and the lock file that a SIGKILL leaves (the kernel released the lock itself)
    assert leftovers and all(p.name.startswith(".tiny-vit.partial-") or p.name == ".tiny-vit.lock" for p in leftovers)
    with pytest.raises(ManifestError):
        model_dirs(tmp_path)
    time.sleep(0.1)
    export_onnx(resolve("tiny-vit", random_init=True), out=tmp_path, towers=["text"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-vit"]


def test_text_graph_cuts_trailing_padding_inside_and_embeds_as_the_whole_context(
    tiny_vit_dir: Path, tmp_path: Path
) -> None:
    """The clip family's text graph slices the ids after the batch's last non-padding column before
    the transformer (a short caption pays for its own length), and embeds exactly as over 77 tokens."""
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    manifest = json.loads((tiny_vit_dir / "manifest.json").read_text())
    text = next(a for a in manifest["artifacts"] if a["tower"] == "text" and a["precision"] == "fp32")
    assert text["trims_trailing_padding"] is True
    graph = onnx.load(str(tiny_vit_dir / "text.onnx"))
    name = TOWERS["text"].input_name
    assert any(n.op_type == "Slice" and n.input[0] == name for n in graph.graph.node)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == loaded.tokenizer.context_length  # what callers pass is unchanged
    whole_context = tmp_path / "text-whole.onnx"
    _, _, _, trimmed = export_mod.export_tower(loaded, "text", whole_context, trim_padding=False)
    assert not trimmed
    assert not any(n.op_type == "Slice" and n.input[0] == name for n in onnx.load(str(whole_context)).graph.node)
    for ids in (
        export_mod.example_input(loaded, "text", 4, seed=3, max_length=5),
        export_mod.example_input(loaded, "text", 2, seed=6),
    ):
        cut = _run(tiny_vit_dir / "text.onnx", "text", ids)
        np.testing.assert_allclose(cut, _run(whole_context, "text", ids), atol=1e-5)
        np.testing.assert_allclose(cut, export_mod.torch_embed(loaded, "text", ids, normalize=False), atol=1e-5)
