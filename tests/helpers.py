"""Test helpers that tamper with artifacts the way real damage or bugs would."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from clip_export.manifest import file_record, find_artifact, read_manifest, write_manifest


def rewrite_initializer(model_dir: Path, artifact_path: str, change: Callable[[np.ndarray], np.ndarray], pick: Callable[[onnx.TensorProto], bool] | None = None) -> str:
    """Change one float initializer and re-hash it in the manifest, so only the numbers are wrong."""
    path = model_dir / artifact_path
    model = onnx.load(str(path))
    candidates = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2 and (pick is None or pick(t))]
    target = max(candidates, key=lambda t: int(np.prod(t.dims)))
    target.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(target)).astype(np.float32), target.name))
    onnx.save(model, str(path))
    manifest = read_manifest(model_dir)
    entry = find_artifact(manifest, path=artifact_path)
    assert entry is not None
    entry.update(file_record(path, model_dir))
    write_manifest(model_dir, manifest)
    return target.name


def flip_byte(path: Path, offset_fraction: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * offset_fraction)] ^= 0xFF
    path.write_bytes(bytes(data))
