"""bench's preprocessing study: the vectorise() breakdown for the report's two images, and the time
and fidelity of each preprocessing variant against the reference PIL pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clip_export.core.artifact import Manifest
from clip_export.core.runner import open_runner
from clip_export.core.spec import ONNX_FORMAT, TOWERS
from clip_export.stages.bench.timing import time_calls

VISUAL_INPUT = TOWERS["visual"].input_name


@dataclass(frozen=True)
class StageTimes:
    image: str
    size: str
    load_ms: float
    preprocess_ms: float
    inference_ms: float
    to_numpy_ms: float
    engine: str

    @property
    def total_ms(self) -> float:
        return self.load_ms + self.preprocess_ms + self.inference_ms + self.to_numpy_ms


@dataclass(frozen=True)
class PreprocessRow:
    variant: str
    png_ms: float
    jpeg_ms: float
    pixel_max_abs: float
    embed_mean_abs_normalized: float | None
    image2image_top1: float | None
    within_fp32_tolerance: bool | None


def _median_ms(fn: Callable[[], Any], runs: int = 15) -> float:
    return time_calls(fn, warmup=2, budget_s=0.5, min_runs=runs, max_runs=runs + 2).p50_ms


def report_images(evalset_dir: Path | None = None) -> list[Path]:
    """The report's two image kinds from the bundled set: a wide RGBA PNG and a small JPEG."""
    from clip_export.core.evalset import BUNDLED_DIR

    images = evalset_dir or BUNDLED_DIR / "images"
    return [images / "coffee-and-cat-wide-alpha.png", images / "rocket-small.jpg"]


def vectorise_breakdown(model_dir: Path, manifest: Manifest, threads: int, loaded: Any | None) -> list[StageTimes]:
    from PIL import Image

    from clip_export.core.preprocess import load_image, preprocess_fast, preprocess_reference

    config = manifest.preprocess
    visual = manifest.find(tower="visual", precision="fp32", format=ONNX_FORMAT)
    if visual is None:
        return []
    session = open_runner(model_dir, visual, threads=threads).session
    rows = []
    for path in report_images():

        def load() -> Image.Image:
            return load_image(path)

        image = load()
        pixels = preprocess_reference(image, config)[None]
        rows.append(
            StageTimes(
                path.name,
                f"{image.width}x{image.height} {image.mode}",
                _median_ms(load),
                _median_ms(lambda: preprocess_reference(image, config)),
                _median_ms(lambda: session.run(None, {VISUAL_INPUT: pixels})),
                0.0,
                "onnxruntime fp32 CPU (output is already numpy)",
            )
        )
        fast_ms = _median_ms(lambda: preprocess_fast(image, config))
        rows.append(
            StageTimes(
                path.name,
                rows[-1].size,
                rows[-1].load_ms,
                fast_ms,
                rows[-1].inference_ms,
                0.0,
                "onnxruntime fp32 CPU, ClipOnnx's default preprocessing (vectorised crop-resize)",
            )
        )
        if loaded is not None:
            import torch

            x = torch.from_numpy(pixels)
            with torch.no_grad():
                out = loaded.model.encode_image(x)
                infer = _median_ms(lambda: loaded.model.encode_image(x))
            rows.append(
                StageTimes(
                    path.name,
                    rows[-1].size,
                    rows[-1].load_ms,
                    rows[-2].preprocess_ms,
                    infer,
                    _median_ms(lambda: out.numpy(), runs=50),
                    "torch eager fp32 CPU",
                )
            )
    session = None  # release the weights before the next session is created
    return rows


def preprocessing_variants(model_dir: Path, manifest: Manifest, threads: int) -> list[PreprocessRow]:
    """Time and fidelity of each preprocessing variant against the reference PIL pipeline."""
    from PIL import Image

    from clip_export.core.evalset import load_evalset
    from clip_export.core.metrics import l2_normalize, retrieval_agreement, run_batches
    from clip_export.core.preprocess import VARIANTS, preprocess_reference

    config = manifest.preprocess
    evalset = load_evalset()
    visual = manifest.find(tower="visual", precision="fp32", format=ONNX_FORMAT)
    session = open_runner(model_dir, visual, threads=threads).session if visual else None

    def opened(path: Path) -> Image.Image:
        handle = Image.open(path)  # keep it lazy: draft() must act before decoding
        return handle

    reference_pixels = np.stack([preprocess_reference(opened(p), config) for p in evalset.image_paths])
    reference_embeds = run_batches(session, VISUAL_INPUT, reference_pixels) if session else None
    png, jpeg = report_images()
    rows = []
    variants: dict[str, Callable[..., np.ndarray]] = {
        "open_clip torchvision (reference)": _torchvision_transform(config),
        **VARIANTS,
    }
    for name, fn in variants.items():
        if fn is None:
            continue
        try:
            png_ms = _median_ms(lambda: fn(opened(png), config), runs=8)
            jpeg_ms = _median_ms(lambda: fn(opened(jpeg), config), runs=15)
            pixels = np.stack([fn(opened(p), config) for p in evalset.image_paths]).astype(np.float32)
        except ImportError as exc:
            rows.append(
                PreprocessRow(
                    f"{name} (unavailable: {exc.name} not installed)",
                    float("nan"),
                    float("nan"),
                    float("nan"),
                    None,
                    None,
                    None,
                )
            )
            continue
        pixel_delta = float(np.abs(pixels - reference_pixels).max())
        embed_delta = top1 = None
        within = None
        if session is not None and reference_embeds is not None:
            embeds = run_batches(session, VISUAL_INPUT, pixels)
            embed_delta = float(np.abs(l2_normalize(embeds) - l2_normalize(reference_embeds)).mean())
            top1 = retrieval_agreement(
                reference_embeds, reference_embeds, embeds, embeds, exclude_self=True
            ).top1_agreement
            from clip_export.core.spec import THRESHOLDS

            within = embed_delta <= THRESHOLDS["fp32"].mean_abs_normalized
        rows.append(PreprocessRow(name, png_ms, jpeg_ms, pixel_delta, embed_delta, top1, within))
    return rows


def _torchvision_transform(config: Any) -> Callable[..., np.ndarray] | None:
    try:
        import open_clip
    except ImportError:
        return None
    transform = open_clip.image_transform(
        config.image_size,
        is_train=False,
        mean=config.mean,
        std=config.std,
        resize_mode=config.resize_mode,
        interpolation=config.interpolation,
    )
    return lambda image, _config: transform(image).numpy()
