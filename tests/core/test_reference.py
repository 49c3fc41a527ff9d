from __future__ import annotations

import numpy as np
import pytest

from clip_export import load_model, resolve
from clip_export.core.evalset import load_evalset
from clip_export.core.reference import compute_reference, example_input, torch_embed, widest_activation_per_row
from clip_export.core.spec import TOWERS


def test_example_inputs_are_deterministic_and_end_with_the_eot() -> None:
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    ids = example_input(loaded, "text", 4, seed=3)
    assert np.array_equal(ids, example_input(loaded, "text", 4, seed=3)) and ids.dtype == np.int64
    settings = loaded.tokenizer
    assert ids.shape == (4, settings.context_length) and (ids[:, 0] == settings.sot_token_id).all()
    assert (
        (ids == settings.eot_token_id).sum(axis=1) == 1
    ).all()  # exactly one end token per row, for the ArgMax pooling
    pixels = example_input(loaded, "visual", 2)
    assert pixels.shape == (2, 3, *loaded.preprocess.image_size) and pixels.dtype == np.float32


def test_the_widest_activation_is_the_largest_module_output_per_row() -> None:
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    # tiny-vit (tests/configs): 16 patches of a 64-pixel image plus the class token, 77 text tokens;
    # both towers 64 wide with an MLP 4x that: the MLP's hidden layer is each tower's widest tensor
    assert widest_activation_per_row(loaded, "visual") == (1 + (64 // 16) ** 2) * 4 * 64
    assert widest_activation_per_row(loaded, "text") == 77 * 4 * 64


def test_the_reference_holds_each_towers_inputs_and_embeddings() -> None:
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    evalset = load_evalset()
    arrays = compute_reference(loaded, evalset, ["visual", "text"], normalize=False)
    assert set(arrays) == {TOWERS[t].input_name for t in TOWERS} | {TOWERS[t].output_name for t in TOWERS}
    assert len(arrays[TOWERS["visual"].output_name]) == len(evalset.image_paths)
    assert len(arrays[TOWERS["text"].output_name]) == len(evalset.captions)
    again = torch_embed(loaded, "text", arrays[TOWERS["text"].input_name][:3], normalize=False)
    np.testing.assert_allclose(again, arrays[TOWERS["text"].output_name][:3], rtol=1e-5, atol=1e-6)


def test_cutting_trailing_padding_changes_no_embedding() -> None:
    import dataclasses

    import torch

    from clip_export.core.reference import encode_trimmed_text, trims_text_padding

    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    assert trims_text_padding(loaded)  # the clip family's rule, and its text tower is causal
    assert not trims_text_padding(dataclasses.replace(loaded, family="siglip"))  # last-token pooling: no rule
    pad = loaded.tokenizer.pad_token_id
    short = example_input(loaded, "text", 4, seed=1, max_length=6)
    assert (short[:, 6:] == pad).all()
    whole = example_input(loaded, "text", 3, seed=4)
    whole[0] = example_input(loaded, "text", 1, seed=9, max_length=77)[0]
    whole[0, -1] = loaded.tokenizer.eot_token_id  # a caption that fills the context: nothing to cut
    for ids in (short, whole, np.full((2, whole.shape[1]), pad, dtype=np.int64)):
        with torch.no_grad():
            expected = loaded.model.encode_text(torch.from_numpy(ids)).numpy()
            got = encode_trimmed_text(loaded.model, torch.from_numpy(ids), pad, normalize=False).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The model is left as it was: its full-size positional embedding and mask are back.
    assert loaded.model.positional_embedding.shape[0] == whole.shape[1]
    assert "positional_embedding" not in vars(loaded.model) and "attn_mask" not in vars(loaded.model)


def test_a_tower_pooled_after_its_caption_or_without_a_causal_mask_is_not_cut() -> None:
    import torch

    from clip_export.core.errors import ClipExportError
    from clip_export.core.reference import encode_trimmed_text, trims_text_padding

    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    loaded.model.text_pool_type = "last"  # causal, but pooled at the last position: padding decides it
    assert not trims_text_padding(loaded)
    loaded.model.text_pool_type = "argmax"
    assert trims_text_padding(loaded)
    loaded.model.attn_mask = None  # bidirectional: positions after the caption would change it
    assert not trims_text_padding(loaded)
    ids = torch.from_numpy(example_input(loaded, "text", 2, seed=1))
    with pytest.raises(ClipExportError, match="nor masks its padding"):
        encode_trimmed_text(loaded.model, ids, loaded.tokenizer.pad_token_id, normalize=False)
