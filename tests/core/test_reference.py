from __future__ import annotations

import numpy as np

from clip_export import load_model, resolve
from clip_export.core.evalset import load_evalset
from clip_export.core.reference import compute_reference, example_input, torch_embed
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


def test_the_reference_holds_each_towers_inputs_and_embeddings() -> None:
    loaded = load_model(resolve("tiny-vit", random_init=True, seed=0))
    evalset = load_evalset()
    arrays = compute_reference(loaded, evalset, ["visual", "text"], normalize=False)
    assert set(arrays) == {TOWERS[t].input_name for t in TOWERS} | {TOWERS[t].output_name for t in TOWERS}
    assert len(arrays[TOWERS["visual"].output_name]) == len(evalset.image_paths)
    assert len(arrays[TOWERS["text"].output_name]) == len(evalset.captions)
    again = torch_embed(loaded, "text", arrays[TOWERS["text"].input_name][:3], normalize=False)
    np.testing.assert_allclose(again, arrays[TOWERS["text"].output_name][:3], rtol=1e-5, atol=1e-6)
