"""Embeds captions and images through Hugging Face optimum's ONNX Runtime classes from a release's hf/,
the way a user would (docs/clients.md, "optimum"). Run by tests/test_optimum.py in a subprocess whose
PYTHONPATH puts the isolated install (.clients/optimum: optimum-onnx, optimum, transformers 4.57,
which our venv's transformers 5 cannot host) ahead of the venv. Imports nothing from clip_export.

    python optimum_embed.py HF_DIR TEXT_ONNX VISION_ONNX CAPTIONS_JSON OUT_NPZ IMAGE...

(the ONNX paths relative to HF_DIR, as clip_export.stages.release.hf_layout names them)

writes the embeddings, input_ids, pixel_values, the captions' untruncated lengths, the versions and what the other optimum classes do
with the layout (probes.json inside the npz as a string)."""

from __future__ import annotations

import json
import sys
import traceback
from importlib.metadata import version


def probe(call) -> str:  # type: ignore[no-untyped-def]
    """'ok' or the exception's type and first line: what an optimum class does with hf/."""
    try:
        call()
        return "ok"
    except Exception as error:  # noqa: BLE001 - the message is the finding
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def where(relative: str) -> dict[str, str]:
    """from_pretrained's subfolder and file_name for a path inside hf/."""
    subfolder, _, file_name = relative.rpartition("/")
    return {"subfolder": subfolder, "file_name": file_name}


def main(hf: str, text_onnx: str, vision_onnx: str, captions_path: str, out: str, images: list[str]) -> None:
    import numpy as np
    import optimum.onnxruntime as ort_models
    from optimum.onnxruntime import ORTModelForCustomTasks
    from transformers import AutoConfig, AutoProcessor
    from transformers.image_utils import load_image

    captions = json.loads(open(captions_path, encoding="utf-8").read())
    # The recipe (docs/clients.md): one processor, one ORTModelForCustomTasks per tower.
    processor = AutoProcessor.from_pretrained(hf)
    text = ORTModelForCustomTasks.from_pretrained(hf, **where(text_onnx))
    vision = ORTModelForCustomTasks.from_pretrained(hf, **where(vision_onnx))
    tokens = processor(text=captions, padding=True, truncation=True, return_tensors="np")
    text_embeds = text(**tokens)["text_embeds"]  # the attention mask is passed and ignored: the graph takes ids only
    pixels = processor(images=[load_image(p) for p in images], return_tensors="np")
    image_embeds = vision(**pixels)["image_embeds"]
    ids, pixels = tokens["input_ids"], pixels["pixel_values"]

    feature = ort_models.ORTModelForFeatureExtraction.from_pretrained(hf, **where(text_onnx))
    zero_shot = ort_models.ORTModelForZeroShotImageClassification
    probes = {
        "config": type(AutoConfig.from_pretrained(hf)).__name__,
        "processor": type(processor).__name__,
        "tokenizer": type(processor.tokenizer).__name__,
        "image_processor": type(processor.image_processor).__name__,
        "ORTModelForFeatureExtraction(text_model.onnx)": probe(lambda: feature(input_ids=ids)),
        "ORTModelForZeroShotImageClassification(text_model.onnx)": probe(
            lambda: zero_shot.from_pretrained(hf, **where(text_onnx))(input_ids=ids, pixel_values=pixels)
        ),
        "zero_shot_default_file": zero_shot.from_pretrained(hf).path.name,
    }
    versions = {
        name: version(name) for name in ("optimum-onnx", "optimum", "transformers", "tokenizers", "onnxruntime")
    }
    lengths = [len(row) for row in processor.tokenizer(captions)["input_ids"]]
    np.savez(
        out,
        text_embeds=text_embeds,
        image_embeds=image_embeds,
        input_ids=ids,
        pixel_values=pixels,
        untruncated_lengths=np.array(lengths),
        probes=json.dumps(probes),
        versions=json.dumps(versions),
    )


if __name__ == "__main__":
    try:
        main(*sys.argv[1:6], sys.argv[6:])
    except Exception:
        traceback.print_exc()
        sys.exit(1)
