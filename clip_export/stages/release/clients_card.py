"""The model card's section on `hf/` and what transformers.js measured on it at release time
(clip_export.stages.release.clients writes the record; docs/clients.md explains the figures)."""

from __future__ import annotations

from typing import Any

from clip_export.core.artifact import Manifest
from clip_export.stages.release.clients import IMAGE_TARGET_COSINE

# What a transformers.js user writes to get open_clip's preprocessing: the graph with it inside.
PREPROCESSING_RECIPE = [
    "const vision = await CLIPVisionModelWithProjection.from_pretrained('hf', { model_file_name: "
    "'vision_model_preprocessing', dtype: 'fp32' });",
    "const image = (await RawImage.read('photo.jpg')).rgb();",
    "const { image_embeds } = await vision({ image_uint8: new Tensor('uint8', image.data, [image.height, "
    "image.width, 3]) });",
]


def clients_section(manifest: Manifest) -> list[str]:
    """How to load hf/ with Hugging Face tooling, and what transformers.js measured at release time."""
    layout = manifest.section("hf_layout")
    if not layout:
        return []
    lines = [
        "",
        "## Hugging Face layout (`hf/`)",
        "",
        "`hf/` holds config.json, preprocessor_config.json, tokenizer.json, tokenizer_config.json "
        "and the ONNX files under "
        "`hf/onnx/` with the names transformers.js looks for: "
        + ", ".join(f"`{name}` ({source})" for name, source in layout["onnx"].items())
        + ".",
        "",
        "```js",
        "import { env, AutoTokenizer, CLIPTextModelWithProjection } from '@huggingface/transformers';",
        "env.allowRemoteModels = false; env.localModelPath = '/path/to/release';",
        "const tokenizer = await AutoTokenizer.from_pretrained('hf'); const model = await CLIPTextModelWithProjection.from_pretrained('hf');",
        "const { text_embeds } = await model(tokenizer(['a photo of a cat'], { padding: 'max_length', "
        "truncation: true }));",
        "```",
    ]
    if any(name.startswith("vision_model_preprocessing") for name in layout["onnx"]):
        lines += [
            "",
            "Images with open_clip's resize, crop and normalisation (the graph has them inside; `AutoProcessor` "
            "resizes with sharp, "
            "which is not PIL's bicubic):",
            "",
            "```js",
            "import { CLIPVisionModelWithProjection, RawImage, Tensor } from '@huggingface/transformers';",
            *PREPROCESSING_RECIPE,
            "```",
        ]
    record = (manifest.section("clients") or {}).get("transformers.js")
    if not record:
        return lines
    if record.get("status") != "measured":
        return lines + ["", f"transformers.js was not measured for this release: {record.get('reason')}."]
    lines += [
        "",
        f"Measured at release time with {record['client']} on {record['environment']}, against `ClipOnnx` "
        "on the same release (cosine of the embeddings):",
        "",
        "| input | items | cosine |",
        "|---|---|---|",
        f"| bundled captions | {record['captions']} | min {record['text_min_cosine']:.7f} |",
        f"| a caption longer than the context | 1 | {record['long_caption_cosine']:.7f} |",
        f"| bundled images, `AutoProcessor` (sharp's bicubic resize, not PIL's) | {len(record['images'])} "
        f"| {_images(record)} |",
    ]
    graph = record.get("preprocessing_graph") or {}
    if graph.get("status") == "measured":
        lines.append(
            f"| bundled images, `{graph['file']}` (open_clip's resize in the graph) | {len(graph['images'])} "
            f"| {_images(graph)} |"
        )
    elif graph:
        lines.append(f"| bundled images through a preprocessing graph | - | not measured: {graph.get('reason')} |")
    variants = record.get("variants") or []
    if variants:
        lines += [
            "",
            "Every file under `hf/onnx/`, loaded by transformers.js with its `dtype` and fed the same "
            "ids, the same pixel values, or "
            "(preprocessing graphs) each image's decoded pixels, against `ClipOnnx` running the same precision:",
            "",
            "| file | dtype | input | items | min cosine | max abs diff | nearest ClipOnnx precision "
            "| limit | within |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in variants:
            lines.append(
                f"| `{row['file']}` | {row['dtype']} | `{row['input']}` | {row['items']} | {row['min_cosine']:.7f} "
                f"| {row['max_abs_diff']:.1e} | "
                f"{row.get('nearest_precision') or '-'} | {row['limit']} | {'yes' if row['within_limit'] else 'NO'} |"
            )
    return lines


def _images(figures: dict[str, Any]) -> str:
    return (
        f"min {figures['image_min_cosine']:.5f}, median {figures['image_median_cosine']:.5f}; "
        f"{figures['images_at_target']} of {len(figures['images'])} at {IMAGE_TARGET_COSINE} or above"
    )
