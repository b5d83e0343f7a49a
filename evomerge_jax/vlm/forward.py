"""A LLaVA forward and greedy generation: image features (features.py) spliced into the token
embeddings (`model.splice_embeds`), then the text decoder unchanged."""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ..arch import ModelSpec
from ..generation import check_inputs, generation_inputs, greedy_generate
from ..model import embed, hidden_states_from_embeds, splice_embeds, unembed
from .checkpoint import VlmCheckpoint
from .features import image_embeds


@partial(jax.jit, static_argnames=("spec",))
def language_forward(params: dict, spec: ModelSpec, tokens_bs, mask_bs, image_embeds_bsd,
                     image_mask_bs):
    """Logits [B, S, V] (float32) of the language tower given the placed image features."""
    h = splice_embeds(embed(params, spec, tokens_bs), image_embeds_bsd, image_mask_bs)
    return unembed(params, spec, hidden_states_from_embeds(params, spec, h, mask_bs))


def vlm_image_embeds(ckpt: VlmCheckpoint, tokens, pixel_values, image_sizes):
    return image_embeds(ckpt.params["vision"], ckpt.params["projector"], ckpt.spec, tokens,
                        pixel_values, image_sizes)


def vlm_logits(ckpt: VlmCheckpoint, input_ids, attention_mask=None, pixel_values=None,
               image_sizes=None) -> jax.Array:
    tokens, mask = check_inputs(input_ids, attention_mask)
    embeds, image_mask = vlm_image_embeds(ckpt, tokens, pixel_values, image_sizes)
    return language_forward(ckpt.params["language"], ckpt.spec.text, tokens, mask, embeds,
                            image_mask)


def vlm_generate(ckpt: VlmCheckpoint, input_ids, max_new_tokens: int, eos_token_id=None,
                 attention_mask=None, pad_token_id: int | None = None, pixel_values=None,
                 image_sizes=None) -> np.ndarray:
    tokens, mask, eos, pad = generation_inputs(input_ids, attention_mask, max_new_tokens,
                                               eos_token_id, pad_token_id)
    embeds, image_mask = vlm_image_embeds(ckpt, tokens, pixel_values, image_sizes)
    new = greedy_generate(ckpt.params["language"], ckpt.spec.text, tokens, mask,
                          max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad,
                          image_embeds=embeds, image_mask=image_mask)
    return np.concatenate([np.asarray(tokens), np.asarray(new)], axis=1)
