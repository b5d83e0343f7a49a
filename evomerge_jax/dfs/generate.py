"""Greedy generation for DFS paths, with one KV cache per slot (a layer used twice in a path keeps
two caches, one per step). Shares the prefill/decode loop of `generation.greedy_loop` with the
plain decoder; only the layer stack differs (`forward.run_slots`).

A single path runs its used layers only (cache [n, 1, B, T, N, E], n its length padded to a
power of two; padded steps are skipped); a population scans the usable window of slots (cache
[n_window, P, B, T, N, E]) and runs each slot for the candidates that use it only, one at a time,
exactly as the forward population pass does (`run_slots`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..arch import ModelSpec
from ..checkpoint import Checkpoint
from ..generation import generation_inputs, greedy_loop
from ..model import embed, unembed
from ..vision_splice import with_image
from .forward import path_arrays, run_slots, window_slots
from .genome import PathSpec, decode_population
from .path import LayerPath


@partial(jax.jit, static_argnames=("spec", "max_new_tokens", "eos_ids", "pad_id"))
def slots_generate(params: dict, spec: ModelSpec, slot_layer_n, used_pn, scale_pn, tokens_bs,
                   mask_bs, *, max_new_tokens: int, eos_ids: tuple[int, ...] = (),
                   pad_id: int = 0, image=None) -> jax.Array:
    """New tokens [P, B, max_new_tokens] for P candidates over one slot table (see `run_slots`).
    Prompts [B, S] are shared by the candidates and must be left-padded; `image` (embeds, mask)
    is spliced into the prompt's embeddings (vision_splice.py)."""
    p, n = used_pn.shape
    b, s = tokens_bs.shape
    cache_shape = (n, p, b, s + max_new_tokens, spec.num_kv_heads, spec.head_dim)
    dtype = params["embed"].dtype
    caches = (jnp.zeros(cache_shape, dtype), jnp.zeros(cache_shape, dtype))

    def embed_fn(tokens):  # the shared prompt [B, S], then each candidate's tokens [P, B, 1]
        h = embed(params, spec, tokens)
        if tokens.ndim == 2:
            h = with_image(h, image)
        return jnp.broadcast_to(h, (p,) + h.shape[-3:])

    def layers_fn(h, ctx, caches, cache_index):
        return run_slots(params, spec, slot_layer_n, used_pn, scale_pn, h, ctx, caches,
                         cache_index)

    return greedy_loop(embed_fn, layers_fn, jax.vmap(lambda h: unembed(params, spec, h)), caches,
                       tokens_bs, mask_bs, spec, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                       pad_id=pad_id)


def population_generate(params: dict, spec: ModelSpec, path_spec: PathSpec, genomes_pd, tokens_bs,
                        mask_bs, *, max_new_tokens: int, eos_ids: tuple[int, ...] = (),
                        pad_id: int = 0, image=None) -> jax.Array:
    """New tokens [P, B, max_new_tokens] of P genomes (decoded on device) in one compiled loop."""
    slot_layer_n, used_pn, scale_pn = window_slots(
        path_spec, spec, decode_population(path_spec, jnp.asarray(genomes_pd)))
    return slots_generate(params, spec, slot_layer_n, used_pn, scale_pn, tokens_bs, mask_bs,
                          max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                          image=image)


def path_generate(stack: Checkpoint, path: LayerPath, input_ids, max_new_tokens: int,
                  eos_token_id=None, attention_mask=None,
                  pad_token_id: int | None = None) -> np.ndarray:
    """Greedy decoding along one path: [B, S + max_new_tokens] (prompt included), with the same
    conventions as `evomerge_jax.generate` (left-padded prompts, EOS then `pad_token_id`)."""
    tokens, mask, eos, pad = generation_inputs(input_ids, attention_mask, max_new_tokens,
                                               eos_token_id, pad_token_id)
    layer_n, scale_n, used_n = path_arrays(path, stack.spec)
    new = slots_generate(stack.params, stack.spec, layer_n, used_n[None], scale_n[None], tokens,
                         mask, max_new_tokens=max_new_tokens, eos_ids=eos, pad_id=pad)
    return np.concatenate([np.asarray(tokens), np.asarray(new[0])], axis=1)
