"""LLaVA-1.5 and LLaVA-NeXT in JAX against transformers (the oracle): logits within 1e-4 on mixed
batches (images and text-only rows; several image sizes and aspect ratios), greedy generation
equal. Inputs come from the model dir's own AutoProcessor (vlm/processor.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vlm_models import CASES, built_case, torch_inputs

import evomerge_jax


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(name, tmp_path_factory):
    _, model, ckpt, enc = built_case(name, tmp_path_factory)
    ours = np.asarray(evomerge_jax.logits(ckpt, enc["input_ids"], enc["attention_mask"],
                                          pixel_values=enc["pixel_values"],
                                          image_sizes=enc["image_sizes"]))
    with torch.no_grad():
        ref = model(**torch_inputs(enc)).logits.numpy()
    real = enc["attention_mask"].astype(bool)
    assert (enc["input_ids"] == ckpt.spec.image_token_id).sum() > 0
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(tmp_path_factory):
    _, model, ckpt, enc = built_case("next_clip_default", tmp_path_factory)
    ours = evomerge_jax.generate(ckpt, enc["input_ids"], 5, attention_mask=enc["attention_mask"],
                                 pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"])
    with torch.no_grad():
        ref = model.generate(**torch_inputs(enc), max_new_tokens=5, do_sample=False,
                             eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, ref)
