"""LLaVA-1.5 and LLaVA-NeXT in JAX against transformers (the oracle): logits within 1e-4 on mixed
batches (images and text-only rows; several image sizes and aspect ratios), greedy generation
equal. Inputs come from the model dir's own AutoProcessor (vlm/processor.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import evomerge_jax
from evomerge_jax.vlm.processor import encode
from vlm_models import build_vlm, random_image

# name -> builder arguments: both towers, feature layers (negative, positive, a list) and
# select strategies (default drops CLS, full keeps every token).
CASES = {
    "llava_clip_default": dict(kind="clip", feature_layer=-2, strategy="default"),
    "llava_siglip_full_list": dict(kind="siglip", feature_layer=[-1, 0], strategy="full",
                                   family="qwen2_bias_sliding"),
    "next_clip_default": dict(kind="clip", next_=True, feature_layer=-1, strategy="default"),
    "next_siglip_full": dict(kind="siglip", next_=True, feature_layer=1, strategy="full",
                             family="mistral_sliding"),
}
# (width, height) per image: wide, tall, square, smaller than a tile; None: a text-only row.
SIZES = [(40, 30), None, (20, 50), (28, 28), (13, 9)]
PROMPTS = ["USER: <image> What is in the image ? ASSISTANT:", "USER: What is the colour ?",
           "<image> Describe the shape", "USER: <image> one two three", "<image> colour ?"]


_BUILT: dict = {}


def _built(name, tmp_path_factory):
    """Each case built once per session: (name, dir, torch model, our checkpoint, inputs)."""
    if name not in _BUILT:
        path = tmp_path_factory.mktemp(name)
        model = build_vlm(path, seed=len(name), **CASES[name])
        images = [None if s is None else random_image(*s, seed=i) for i, s in enumerate(SIZES)]
        _BUILT[name] = (name, path, model, evomerge_jax.load(path), encode(path, PROMPTS, images))
    return _BUILT[name]


@pytest.fixture(params=list(CASES))
def vlm(request, tmp_path_factory):
    return _built(request.param, tmp_path_factory)


def _torch_inputs(enc):
    return {k: torch.as_tensor(v) for k, v in enc.items() if v is not None}


def test_logits_match_transformers(vlm):
    name, _, model, ckpt, enc = vlm
    ours = np.asarray(evomerge_jax.logits(ckpt, enc["input_ids"], enc["attention_mask"],
                                          pixel_values=enc["pixel_values"],
                                          image_sizes=enc["image_sizes"]))
    with torch.no_grad():
        ref = model(**_torch_inputs(enc)).logits.numpy()
    real = enc["attention_mask"].astype(bool)
    assert (enc["input_ids"] == ckpt.spec.image_token_id).sum() > 0
    np.testing.assert_allclose(ours[real], ref[real], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["llava_clip_default", "next_clip_default"])
def test_greedy_generation_matches_transformers(name, tmp_path_factory):
    _, _, model, ckpt, enc = _built(name, tmp_path_factory)
    ours = evomerge_jax.generate(ckpt, enc["input_ids"], 6, attention_mask=enc["attention_mask"],
                                 pixel_values=enc["pixel_values"], image_sizes=enc["image_sizes"])
    with torch.no_grad():
        ref = model.generate(**_torch_inputs(enc), max_new_tokens=6, do_sample=False,
                             eos_token_id=None, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, ref)
