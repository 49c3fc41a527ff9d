"""clip-export: CLIP towers to verified ONNX, fp16, INT8 and TensorRT artifacts."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clip-export")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+source"

from clip_export.core.errors import ClipExportError  # noqa: E402
from clip_export.core.models import ModelSpec, load_model, resolve  # noqa: E402
from clip_export.stages.export import ExportResult, export_onnx  # noqa: E402

__all__ = ["ClipExportError", "ExportResult", "ModelSpec", "__version__", "export_onnx", "load_model", "resolve"]
