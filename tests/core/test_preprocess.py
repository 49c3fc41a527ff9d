from __future__ import annotations

import numpy as np
import open_clip
import pytest

from clip_export.core.errors import ClipExportError
from clip_export.core.evalset import load_evalset
from clip_export.core.models import PreprocessConfig
from clip_export.core.preprocess import VARIANTS, preprocess_reference


@pytest.mark.parametrize("size", [224, 64])
def test_numpy_preprocessing_is_exact_to_open_clip(size: int) -> None:
    cfg = PreprocessConfig((size, size), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    transform = open_clip.image_transform(
        size, is_train=False, mean=cfg.mean, std=cfg.std, resize_mode="shortest", interpolation="bicubic"
    )
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
    """'longest' (resize the long side, pad) is not implemented: refused by name, never run as another mode."""
    cfg = PreprocessConfig((224, 224), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), resize_mode="longest")
    wide = dict(zip(load_evalset().image_names, load_evalset().open_images()))["coffee-and-cat-wide-alpha.png"]
    with pytest.raises(ClipExportError, match="resize_mode 'longest'; clip-export implements shortest, squash"):
        VARIANTS[variant](wide, cfg)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("variant", ["reference-pil", "vectorised-crop-resize"])
def test_squash_matches_open_clip_bit_for_bit(variant: str, interpolation: str) -> None:
    """SigLIP/DFN's Resize((H, W)) with no crop, on every evaluation image (RGBA, grey, wide, tiny):
    the resampled uint8 pixels are torchvision's exactly (an identity mean/std shows them, x255);
    with SigLIP's 0.5/0.5 the float normalisation agrees to the existing 1e-5 bound."""
    for mean, std in (((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))):
        cfg = PreprocessConfig((224, 160), mean, std, interpolation=interpolation, resize_mode="squash")
        transform = open_clip.image_transform(
            (224, 160), is_train=False, mean=mean, std=std, resize_mode="squash", interpolation=interpolation
        )
        for image in load_evalset().open_images():
            got, expected = VARIANTS[variant](image, cfg), transform(image).numpy()
            if std[0] == 1.0:
                assert np.array_equal(np.rint(got * 255), np.rint(expected * 255))
            assert np.abs(got - expected).max() < 1e-5


def test_normalization_table_is_torchvision_bit_for_bit() -> None:
    """Every uint8 value through ToTensor and Normalize, compared exactly: the table must divide by
    255 as ToTensor does (multiplying by 1/255 misses by an ulp on 325 of the 768 entries)."""
    from PIL import Image
    from torchvision import transforms

    from clip_export.core.preprocess import _normalization_table

    config = PreprocessConfig((224, 224), (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (1, 1, 3))
    expected = transforms.Compose([transforms.ToTensor(), transforms.Normalize(config.mean, config.std)])(
        Image.fromarray(ramp)
    ).numpy()[:, 0, :]
    np.testing.assert_array_equal(_normalization_table(tuple(config.mean), tuple(config.std)), expected)
