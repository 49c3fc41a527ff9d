"""Why transformers.js's AutoProcessor images miss ClipOnnx (docs/clients.md): per bundled image, the
cosine against ClipOnnx of transformers.js with the release's preprocessor_config (resample 3,
bicubic) and with a copy saying resample 1 (lanczos); of a Python emulation of sharp's
`affine([s, 0, 0, s], {interpolator: 'bicubic'})` (Catmull-Rom taps at output x / s: no antialiasing,
corner-aligned, black beyond the last pixel; then transformers.js's floor crop) against transformers.js
itself; and of transformers.js through vision_model_preprocessing.onnx.

    python tools/transformers_js_resize_study.py RELEASE_DIR   (needs Node and the npm packages)
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from clip_export.core.evalset import load_evalset
from clip_export.core.preprocess import load_image
from clip_export.runtime import ClipOnnx
from clip_export.stages.release.clients import find_transformers_js, run_transformers_js


def catmull_rom(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    t = np.abs(t)
    return np.where(
        t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1, np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0)
    )


def affine_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: output x samples input x * n_in / n_out with 4 taps; taps outside are black."""
    x = np.arange(n_out)
    source = x * n_in / n_out
    base = np.floor(source).astype(int)
    weights = np.zeros((n_out, n_in))
    for k in (-1, 0, 1, 2):
        index = base + k
        inside = (index >= 0) & (index < n_in)
        np.add.at(weights, (x[inside], index[inside]), catmull_rom(source - index)[inside])
    return weights


def sharp_pixels(path: Path, runtime: ClipOnnx) -> np.ndarray:
    config = runtime.preprocess_config
    size = int(config.image_size[0])
    rgb = np.asarray(load_image(path).convert("RGB"), dtype=np.float64)
    height, width = rgb.shape[:2]
    scale = size / min(width, height)
    new_w, new_h = (int(np.floor(float(f"{n * scale:.2f}"))) for n in (width, height))  # transformers.js's rounding
    resized = np.einsum(
        "xj,yjc->yxc", affine_weights(width, new_w), np.einsum("yi,ijc->yjc", affine_weights(height, new_h), rgb)
    )
    resized = np.clip(np.round(resized), 0, 255)
    left, top = (new_w - size) // 2, (new_h - size) // 2  # center_crop floors the offset
    crop = resized[top : top + size, left : left + size] / 255
    return ((crop - np.asarray(config.mean)) / np.asarray(config.std)).transpose(2, 0, 1)[None].astype(np.float32)


def main(release: Path) -> None:
    setup = find_transformers_js()
    if isinstance(setup, str):
        raise SystemExit(setup)
    images = list(load_evalset().image_paths)
    runtime = ClipOnnx.from_release(release)
    ours = runtime.embed_images(images)
    columns: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="clip-export-resize-study-") as tmp:
        for resample in (3, 1):
            hf = Path(tmp) / f"resample{resample}" / "hf"
            shutil.copytree(release / "hf", hf)
            config = json.loads((hf / "preprocessor_config.json").read_text())
            (hf / "preprocessor_config.json").write_text(json.dumps({**config, "resample": resample}))
            got = run_transformers_js(
                setup, hf, {"images": images, "preprocessing_dtypes": ["fp32"] if resample == 3 else []}
            )
            columns[f"resample {resample}"] = got["image_embeds"]
            if resample == 3:
                columns["graph"] = got["preprocessing_variants"]["fp32"]
    emulated = np.concatenate([runtime.embed_pixels(sharp_pixels(p, runtime)) for p in images])
    print(
        "| image | size | AutoProcessor, resample 3 (shipped) | resample 1 (lanczos) | emulated sharp affine vs transformers.js | vision_model_preprocessing |"
    )
    print("|---|---|---|---|---|---|")
    cos = {key: np.sum(value * ours, axis=1) for key, value in columns.items()}
    emu = np.sum(emulated * columns["resample 3"], axis=1)
    for i, path in enumerate(images):
        w, h = Image.open(path).size
        print(
            f"| {Path(path).name} | {w}×{h} | {cos['resample 3'][i]:.5f} | {cos['resample 1'][i]:.5f} | {emu[i]:.7f} | {cos['graph'][i]:.6f} |"
        )
    row = lambda c, d: f"min {c.min():.{d}f}, {int(np.sum(c >= 0.999))} of {len(c)} ≥ 0.999"
    print(
        f"| all | | {row(cos['resample 3'], 5)} | {row(cos['resample 1'], 5)} | min {emu.min():.7f} | {row(cos['graph'], 6)} |"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
