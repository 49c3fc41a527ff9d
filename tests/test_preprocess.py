from __future__ import annotations

import numpy as np
import open_clip
import pytest

from clip_export.evalset import load_evalset
from clip_export.models import PreprocessConfig
from clip_export.preprocess import VARIANTS, preprocess_reference


@pytest.mark.parametrize("size", [224, 64])
def test_numpy_preprocessing_is_exact_to_open_clip(size: int) -> None:
    cfg = PreprocessConfig((size, size), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    transform = open_clip.image_transform(size, is_train=False, mean=cfg.mean, std=cfg.std, resize_mode="shortest", interpolation="bicubic")
    for image in load_evalset().open_images():
        expected = transform(image).numpy()
        got = preprocess_reference(image, cfg)
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-5


def test_bundled_set_has_the_required_kinds() -> None:
    evalset = load_evalset()
    images = dict(zip(evalset.image_names, evalset.open_images()))
    assert len(images) >= 24 and len(evalset.captions) >= 48
    wide = images["coffee-and-cat-wide-alpha.png"]
    assert wide.mode == "RGBA" and wide.size == (2162, 762)
    assert images["rocket-small.jpg"].size == (640, 427)
    assert any(im.mode == "L" for im in images.values())
    assert any(min(im.size) < 224 for im in images.values())
    assert "" in evalset.captions
    assert any(not c.isascii() for c in evalset.captions)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    assert max(len(tokenizer.encode(c)) for c in evalset.captions) > 77


def test_variants_share_shape() -> None:
    cfg = PreprocessConfig((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    image = load_evalset().open_images()[0]
    for fn in VARIANTS.values():
        assert fn(image, cfg).shape == (3, 224, 224)


@pytest.mark.parametrize("variant", ["reference-pil", "vectorised-crop-resize"])
def test_unsupported_resize_modes_are_refused_not_approximated(variant: str) -> None:
    """The fast path must not apply the shortest-side rule to 'squash'; it hands over and PIL's path refuses."""
    cfg = PreprocessConfig((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_mode="squash")
    wide = dict(zip(load_evalset().image_names, load_evalset().open_images()))["coffee-and-cat-wide-alpha.png"]
    with pytest.raises(ValueError, match="resize_mode 'squash' is not supported"):
        VARIANTS[variant](wide, cfg)
