from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from clip_export.core import checkpoints, models, tokenizer_setup
from clip_export.core.configs import LocalSources
from clip_export.core.errors import UnknownModelError, UnsafeCheckpointError, WeightsError
from clip_export.core.models import load_model, resolve, spec_from_manifest


def test_openai_names_map_to_quickgelu_archs_with_openai_weights() -> None:
    spec = resolve("ViT-L/14@336px")
    assert (spec.arch, spec.pretrained, spec.slug) == ("ViT-L-14-336-quickgelu", "openai", "ViT-L-14-336px")
    assert resolve("RN50").arch == "RN50-quickgelu"


def test_arch_and_tag_syntax() -> None:
    spec = resolve("ViT-H-14:laion2b_s32b_b79k")
    assert (spec.arch, spec.pretrained) == ("ViT-H-14", "laion2b_s32b_b79k")
    assert spec.slug == "ViT-H-14-laion2b_s32b_b79k"


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="did you mean ViT-B/32"):
        resolve("ViT-B/33")


def test_unknown_tag_lists_the_available_ones() -> None:
    with pytest.raises(WeightsError, match="available: .*openai"):
        resolve("ViT-B-32:nonsense")


def test_only_one_weights_source() -> None:
    with pytest.raises(WeightsError, match="choose one weights source"):
        resolve("ViT-B/32", pretrained="openai", random_init=True)


def test_offline_failure_names_both_ways_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(models, "cached_checkpoint", lambda arch, tag: None)
    with pytest.raises(WeightsError) as info:
        load_model(resolve("ViT-B/32"))
    assert "--weights" in str(info.value) and "--random-init" in str(info.value)


def test_offline_hugging_face_tokenizer_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SigLIP-style config names a hub tokenizer; offline, random weights still need it."""
    import json

    import open_clip

    config = json.loads((Path(__file__).resolve().parents[1] / "configs" / "tiny-vit.json").read_text())
    config["text_cfg"]["hf_tokenizer_name"] = "clip-export-tests/no-such-tokenizer"
    (tmp_path / "tiny-vit-hf-tokenizer.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    monkeypatch.setattr(tokenizer_setup, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(
        WeightsError,
        match="'clip-export-tests/no-such-tokenizer', which is not in the local Hugging Face cache and the hub cannot be reached",
    ):
        load_model(resolve("tiny-vit-hf-tokenizer", random_init=True))


def test_random_init_is_seeded() -> None:
    a = load_model(resolve("tiny-vit", random_init=True, seed=3)).model.state_dict()
    b = load_model(resolve("tiny-vit", random_init=True, seed=3)).model.state_dict()
    c = load_model(resolve("tiny-vit", random_init=True, seed=4)).model.state_dict()
    key = "visual.conv1.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return load_model(resolve("tiny-vit", random_init=True, seed=7)).model.state_dict()


def _same_weights(loaded: models.LoadedModel, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in loaded.model.state_dict().items())


def test_state_dict_checkpoint_loads_with_hash(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    path = tmp_path / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_state.items()}}, path)
    loaded = load_model(resolve("tiny-vit", weights=path))
    assert _same_weights(loaded, tiny_state)
    assert loaded.checkpoint_sha256 == models.sha256_file(path)


def test_safetensors_checkpoint_loads(tmp_path: Path, tiny_state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_state.items()}, str(path))
    assert _same_weights(load_model(resolve("tiny-vit", weights=path)), tiny_state)


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this must never run",))


def test_unsafe_pickle_is_refused_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _Payload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary pickle"):
        load_model(resolve("tiny-vit", weights=path))
    assert "this must never run" not in capsys.readouterr().out


class _BlockedModulePayload:
    def __reduce__(self) -> tuple:
        import os

        return (os.getcwd, ())


def test_a_pickle_calling_into_a_blocked_module_is_refused_as_code(tmp_path: Path) -> None:
    """torch 2.14 words this refusal "unsupported GLOBAL posix.getcwd whose module posix is blocked":
    it used to reach the user as torch's advice to re-run with weights_only=False."""
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": _BlockedModulePayload()}, path)
    with pytest.raises(UnsafeCheckpointError, match="arbitrary pickle"):
        load_model(resolve("tiny-vit", weights=path))


def test_plain_pickle_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(WeightsError):
        load_model(resolve("tiny-vit", weights=path))


def test_checkpoint_for_another_architecture_is_refused(tmp_path: Path) -> None:
    other = load_model(resolve("tiny-rn", random_init=True)).model.state_dict()
    path = tmp_path / "rn.pt"
    torch.save(other, path)
    with pytest.raises(WeightsError, match="does not match the architecture tiny-vit"):
        load_model(resolve("tiny-vit", weights=path))


def test_missing_weights_file() -> None:
    with pytest.raises(WeightsError, match="no such file"):
        resolve("tiny-vit", weights="/nonexistent/weights.pt")


def test_preprocess_and_tokenizer_facts() -> None:
    loaded = load_model(resolve("ViT-B/32", random_init=True))
    assert loaded.preprocess.image_size == (224, 224)
    assert loaded.preprocess.interpolation == "bicubic"
    assert (loaded.tokenizer.context_length, loaded.tokenizer.sot_token_id, loaded.tokenizer.eot_token_id) == (
        77,
        49406,
        49407,
    )
    ids = np.asarray(loaded.tokenize(["a photo"]))
    assert ids[0, 0] == 49406 and 49407 in ids[0]


def test_openai_torchscript_archive_is_read_without_pickle(tmp_path: Path) -> None:
    """OpenAI's .pt files are TorchScript archives; they load through torch.jit, not pickle."""
    import open_clip

    scripted = open_clip.create_model("tiny-vit", pretrained=None, jit=True)
    path = tmp_path / "openai-style.pt"
    torch.jit.save(scripted, str(path))
    assert checkpoints._is_torchscript_archive(path)
    state, is_jit = models.read_state_dict(path)
    assert is_jit and "visual.proj" in state and "text_projection" in state


def test_a_torch_rebuild_takes_the_tokenizer_directory_from_the_user_not_the_manifest(
    siglip_tokenizer_dir: Path, tmp_path: Path
) -> None:
    """verify --reference torch and bench used to read model.tokenizer_dir from manifest.json: a path
    anyone who edits the file could point anywhere."""
    from click.testing import CliRunner

    from clip_export.cli import main
    from clip_export.core.manifest import read_manifest, write_manifest
    from clip_export.stages.export import export_onnx
    from clip_export.stages.verify import verify

    model_dir = export_onnx(
        resolve("tiny-SigLIP", random_init=True, tokenizer=siglip_tokenizer_dir), out=tmp_path
    ).model_dir
    manifest = read_manifest(model_dir)
    manifest.section("model")["tokenizer_dir"] = str(tmp_path / "planted")  # never read: it does not even exist
    write_manifest(model_dir, manifest)
    refused = CliRunner().invoke(main, ["verify", str(model_dir), "--reference", "torch", "-q"])
    assert refused.exit_code == 1
    assert "exported with --tokenizer DIR, which clip-export never reads from a manifest" in refused.output
    assert "planted" not in refused.output
    assert verify(
        model_dir, reference="torch", sources=LocalSources(tokenizer=siglip_tokenizer_dir), write=False
    ).passed
    passed = CliRunner().invoke(
        main, ["verify", str(model_dir), "--reference", "torch", "--tokenizer", str(siglip_tokenizer_dir), "-q"]
    )
    assert passed.exit_code == 0, passed.output
    with pytest.raises(WeightsError, match="--text-config .*exported without --text-config"):
        spec_from_manifest(manifest.model.to_json(), LocalSources(tokenizer=siglip_tokenizer_dir, text_config=tmp_path))
