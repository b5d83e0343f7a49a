"""Batched greedy decoding with a KV cache, jit-compiled end to end (prefill + a scan of steps).

Prompts are left-padded (as transformers recommends for decoder-only generation): every row's last
prompt token sits in the last column, so every row's new tokens go to the same cache slots.
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .arch import ModelSpec
from .errors import EvomergeError
from .model import (decoder_layer, embed, make_context, positions_from_mask, sliding_flags,
                    splice_embeds, unembed)


def _run_layers(params, spec: ModelSpec, h, ctx, caches, cache_index):
    def step(h, layer):
        lp, is_sliding, k, v = layer
        h, (k, v) = decoder_layer(lp, spec, h, ctx, is_sliding, (k, v), cache_index)
        return h, (k, v)

    return jax.lax.scan(step, h, (params["layers"], sliding_flags(spec), *caches))


def _next_token(logits_bv, done_b, eos_ids: tuple[int, ...], pad_id: int):
    token = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    token = jnp.where(done_b, pad_id, token)
    is_eos = jnp.isin(token, jnp.asarray(eos_ids, jnp.int32)) if eos_ids else jnp.zeros_like(done_b)
    return token, done_b | is_eos


def greedy_loop(embed_fn, layers_fn, unembed_fn, caches, tokens_bs, mask_bs, spec: ModelSpec, *,
                max_new_tokens: int, eos_ids: tuple[int, ...] = (), pad_id: int = 0,
                prompt_embed_fn=None):
    """Prefill and a scan of greedy steps over a model given as three functions, so that the plain
    decoder and the population passes (which merge or route layers on the fly) share one loop.

    embed_fn(tokens [..., B, S]) -> h [..., B, S, D]; layers_fn(h, ctx, caches, cache_index) ->
    (h, caches); unembed_fn(h) -> logits [..., B, S, V]. Leading axes (a population) pass through;
    the prompts, positions and masks are shared by all of them. Returns new tokens [..., B, new].
    `prompt_embed_fn` (default embed_fn) embeds the prompt: a vision-language model splices its
    image features there (`model.splice_embeds`).
    """
    b, s = tokens_bs.shape
    key_valid = jnp.concatenate([mask_bs.astype(jnp.int32),
                                 jnp.ones((b, max_new_tokens), jnp.int32)], axis=1)
    positions = positions_from_mask(mask_bs)
    index = jnp.broadcast_to(jnp.arange(s), (b, s))
    ctx = make_context(spec, positions, key_valid, index)
    h, caches = layers_fn((prompt_embed_fn or embed_fn)(tokens_bs), ctx, caches, 0)
    logits = unembed_fn(h[..., -1:, :])[..., 0, :]
    first, done = _next_token(logits, jnp.zeros(logits.shape[:-1], bool), eos_ids, pad_id)
    last_pos = positions[:, -1]

    def step(carry, i):
        token, done, caches = carry
        slot = s + i
        ctx = make_context(spec, (last_pos + 1 + i)[:, None], key_valid, jnp.full((b, 1), slot))
        h, caches = layers_fn(embed_fn(token[..., None]), ctx, caches, slot)
        token, done = _next_token(unembed_fn(h)[..., 0, :], done, eos_ids, pad_id)
        return (token, done, caches), token

    _, rest = jax.lax.scan(step, (first, done, caches), jnp.arange(max_new_tokens - 1))
    return jnp.concatenate([first[..., None], jnp.moveaxis(rest, 0, -1)], axis=-1)


@partial(jax.jit, static_argnames=("spec", "max_new_tokens", "eos_ids", "pad_id"))
def greedy_generate(params, spec: ModelSpec, tokens_bs, mask_bs, *, max_new_tokens: int,
                    eos_ids: tuple[int, ...] = (), pad_id: int = 0, image_embeds=None,
                    image_mask=None):
    """New tokens [B, max_new_tokens]; after a row emits an EOS id it continues with `pad_id`.
    `image_embeds` [B, S, D] and `image_mask` [B, S] (vlm.features): spliced into the prompt."""
    b, s = tokens_bs.shape
    dtype = params["embed"].dtype
    cache_shape = (spec.num_layers, b, s + max_new_tokens, spec.num_kv_heads, spec.head_dim)
    caches = (jnp.zeros(cache_shape, dtype), jnp.zeros(cache_shape, dtype))
    return greedy_loop(
        lambda t: embed(params, spec, t),
        lambda h, ctx, c, i: _run_layers(params, spec, h, ctx, c, i),
        lambda h: unembed(params, spec, h),
        caches, tokens_bs, mask_bs, spec, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
        pad_id=pad_id, prompt_embed_fn=None if image_embeds is None else (
            lambda t: splice_embeds(embed(params, spec, t), image_embeds, image_mask)))


def normalize_eos(eos_token_id: int | Sequence[int] | None) -> tuple[int, ...]:
    if eos_token_id is None:
        return ()
    if isinstance(eos_token_id, int):
        return (eos_token_id,)
    return tuple(int(t) for t in eos_token_id)


def check_inputs(input_ids, attention_mask):
    """input_ids [batch, seq] (or [seq]) and its mask (default all ones) as int32 arrays."""
    tokens = np.asarray(input_ids)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2:
        raise EvomergeError(f"input_ids must be [batch, seq], got shape {tokens.shape}")
    mask = np.ones_like(tokens) if attention_mask is None else np.asarray(attention_mask)
    if mask.shape != tokens.shape:
        raise EvomergeError(f"attention_mask shape {mask.shape} != input_ids shape {tokens.shape}")
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)


def generation_inputs(input_ids, attention_mask, max_new_tokens: int, eos_token_id,
                      pad_token_id: int | None):
    """Checked (tokens, mask, eos ids, pad id) for greedy decoding, shared by every generator."""
    tokens, mask = check_inputs(input_ids, attention_mask)
    if max_new_tokens < 1:
        raise EvomergeError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not bool(np.all(np.asarray(mask)[:, -1])):
        raise EvomergeError("generate needs left-padded prompts: a row ends with padding")
    eos = normalize_eos(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    return tokens, mask, eos, pad
