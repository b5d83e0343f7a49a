"""The public entry points over a `Checkpoint`: logits and greedy generation."""

from __future__ import annotations

import jax
import numpy as np

from .checkpoint import Checkpoint
from .generation import check_inputs, generation_inputs, greedy_generate
from .model import forward

_forward = jax.jit(forward, static_argnames=("spec",))


def logits(ckpt: Checkpoint, input_ids, attention_mask=None) -> jax.Array:
    """Logits [batch, seq, vocab] in float32. Padding (left or right) is read from the mask; each
    row's positions count only its real tokens, so a padded row equals its unpadded self."""
    tokens, mask = check_inputs(input_ids, attention_mask)
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
