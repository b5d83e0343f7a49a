"""The public entry points over a `Checkpoint`: logits and greedy generation."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import Checkpoint
from .errors import EvomergeError
from .generation import greedy_generate, normalize_eos
from .model import forward

_forward = jax.jit(forward, static_argnames=("spec",))


def _inputs(input_ids, attention_mask):
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
    tokens, mask = _inputs(input_ids, attention_mask)
    if max_new_tokens < 1:
        raise EvomergeError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if not bool(np.all(np.asarray(mask)[:, -1])):
        raise EvomergeError("generate needs left-padded prompts: a row ends with padding")
    eos = normalize_eos(eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    return tokens, mask, eos, pad


def logits(ckpt: Checkpoint, input_ids, attention_mask=None) -> jax.Array:
    """Logits [batch, seq, vocab] in float32. Padding (left or right) is read from the mask; each
    row's positions count only its real tokens, so a padded row equals its unpadded self."""
    tokens, mask = _inputs(input_ids, attention_mask)
    return _forward(ckpt.params, ckpt.spec, tokens, mask)


def generate(ckpt: Checkpoint, input_ids, max_new_tokens: int, eos_token_id=None,
             attention_mask=None, pad_token_id: int | None = None) -> np.ndarray:
    """Greedy decoding with a KV cache: [batch, seq + max_new_tokens] (prompt included, as
    transformers returns it). Rows that end early continue with `pad_token_id` (default: the first
    EOS id, else 0). Batched prompts must be left-padded."""
    tokens, mask, eos, pad = generation_inputs(input_ids, attention_mask, max_new_tokens,
                                               eos_token_id, pad_token_id)
    new = greedy_generate(ckpt.params, ckpt.spec, tokens, mask, max_new_tokens=max_new_tokens,
                          eos_ids=eos, pad_id=pad)
    return np.concatenate([np.asarray(tokens), np.asarray(new)], axis=1)
