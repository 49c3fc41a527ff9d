"""Stage: visual artifacts with the preprocessing inside the graph, one per visual precision, each
gated against the exact PIL reference from the bundled raw image files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from clip_export.core.artifact import ArtifactEntry
from clip_export.core.conversion import ConvertResult, Derivation, convert_each, save_model, tool_version
from clip_export.core.errors import ManifestError
from clip_export.core.manifest import read_manifest
from clip_export.core.preprocess_graph import preprocessing_nodes, with_preprocessing
from clip_export.core.progress import Progress, silent
from clip_export.core.spec import INT8_FAMILY_KEYS, ONNX_FORMAT, PREPROCESSING_FORMAT, artifact_file_name, raw_image_io


def add_preprocessing(
    model_dir: Path, *, precisions: Sequence[str] | None = None, force: bool = False, progress: Progress = silent
) -> list[ConvertResult]:
    """A preprocessing graph for each visual ONNX artifact of `precisions` (default: every one there)."""
    import onnx

    model_dir = Path(model_dir)
    manifest = read_manifest(model_dir)
    config = manifest.preprocess
    preprocessing_nodes(config)  # refuses a resize mode or crop the graph does not implement, before any work
    available = [a.precision for a in manifest.select(tower="visual", format=ONNX_FORMAT)]
    chosen = list(precisions) if precisions else list(dict.fromkeys(available))
    missing = [p for p in chosen if p not in available]
    if missing or not chosen:
        raise ManifestError(
            f"{model_dir} has no visual ONNX artifact in {', '.join(missing or ['any precision'])}; it "
            f"has {', '.join(available) or 'none'}"
        )

    def write(source: Path, target: Path) -> dict[str, Any]:
        save_model(with_preprocessing(onnx.load(str(source)), config), target)
        # An INT8 graph keeps its source's kernel family: which CPUs it is for (spec.INT8_FAMILIES).
        origin = manifest.find(path=source.name)
        conversion = (origin.detail("conversion") if origin else None) or {}
        family = {k: v for k, v in conversion.items() if k in INT8_FAMILY_KEYS}
        return {
            "tool": f"clip-export preprocess_graph, onnx {tool_version('onnx')}",
            "preprocessing": {**config.to_json(), "resample": "onnx Resize, antialias, half_pixel, exclude_outside"},
            **family,
        }

    def io(source: ArtifactEntry) -> dict[str, Any]:
        return raw_image_io(int(source.outputs[0].shape[-1]))

    results = []
    for precision in chosen:
        how = Derivation(
            precision,
            lambda path: artifact_file_name(path, preprocessing=True),
            source_precision=precision,
            format=PREPROCESSING_FORMAT,
            io=io,
        )
        results.append(convert_each(model_dir, how, write, towers=("visual",), force=force, progress=progress))
    return results
