"""Shared fixtures: tiny random-weight CLIP configs registered with open_clip, and one export."""
from __future__ import annotations

import platform
from pathlib import Path

import pytest

CONFIGS = Path(__file__).parent / "configs"


def pytest_report_header(config: pytest.Config) -> list[str]:
    import numba
    import onnx
    import onnxruntime
    import open_clip
    import PIL
    import torch

    import clip_export

    return [
        f"clip-export {clip_export.__version__}; python {platform.python_version()}; torch {torch.__version__}; "
        f"open_clip {open_clip.__version__}; onnx {onnx.__version__}; onnxruntime {onnxruntime.__version__}; "
        f"pillow {PIL.__version__}; numba {numba.__version__}",
        f"execution providers available: {', '.join(onnxruntime.get_available_providers())}; "
        f"torch.cuda available: {torch.cuda.is_available()}",
    ]


def pytest_configure(config: pytest.Config) -> None:
    import open_clip

    open_clip.add_model_config(CONFIGS)


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One exported tiny ViT (both towers), shared read-only by tests that only inspect it."""
    from clip_export import export_onnx, resolve

    out = tmp_path_factory.mktemp("artifacts")
    return export_onnx(resolve("tiny-vit", random_init=True, seed=0), out=out).model_dir


@pytest.fixture
def tiny_vit_copy(tiny_vit_dir: Path, tmp_path: Path) -> Path:
    """A private copy for tests that tamper with files or append to the manifest."""
    import shutil

    target = tmp_path / tiny_vit_dir.name
    shutil.copytree(tiny_vit_dir, target)
    return target
