"""The public entry points over a `Checkpoint` (or a `vlm.VlmCheckpoint`, which also takes
images): load, logits and greedy generation."""

from __future__ import annotations

import jax
import numpy as np

from pathlib import Path

from .checkpoint import Checkpoint, TensorReader, load_text
from .errors import EvomergeError
from .generation import check_inputs, generation_inputs, greedy_generate
from .model import forward
from .vlm.checkpoint import VlmCheckpoint, is_vlm_dir, load_vlm
from .vlm.forward import vlm_generate, vlm_logits

_forward = jax.jit(forward, static_argnames=("spec",))


def load(path: str | Path, dtype: str | None = None) -> Checkpoint | VlmCheckpoint:
    """Load an HF model dir: a text LM gives a `Checkpoint`, a LLaVA / LLaVA-NeXT dir a
    `vlm.VlmCheckpoint`. `dtype` (float32, float16, bfloat16) casts; None keeps the file's."""
    return load_vlm(path, dtype) if is_vlm_dir(path) else load_text(TensorReader(path), dtype)


def _text_only(ckpt, pixel_values, image_sizes) -> None:
    if not isinstance(ckpt, VlmCheckpoint) and (pixel_values is not None
                                                or image_sizes is not None):
        raise EvomergeError(f"{ckpt.spec.architecture} is a text model: it takes no pixel_values")


def logits(ckpt: Checkpoint | VlmCheckpoint, input_ids, attention_mask=None, *,
           pixel_values=None, image_sizes=None) -> jax.Array:
    """Logits [batch, seq, vocab] in float32. Padding (left or right) is read from the mask; each
    row's positions count only its real tokens, so a padded row equals its unpadded self. A VLM
    takes the processor's `pixel_values` (and LLaVA-NeXT's `image_sizes`); its prompts hold one
    image token per image feature (vlm/processor.py)."""
    _text_only(ckpt, pixel_values, image_sizes)
    if isinstance(ckpt, VlmCheckpoint):
        return vlm_logits(ckpt, input_ids, attention_mask, pixel_values, image_sizes)
    tokens, mask = check_inputs(input_ids, attention_mask)
    return _forward(ckpt.params, ckpt.spec, tokens, mask)


def generate(ckpt: Checkpoint | VlmCheckpoint, input_ids, max_new_tokens: int, eos_token_id=None,
             attention_mask=None, pad_token_id: int | None = None, *, pixel_values=None,
             image_sizes=None) -> np.ndarray:
    """Greedy decoding with a KV cache: [batch, seq + max_new_tokens] (prompt included, as
    transformers returns it). Rows that end early continue with `pad_token_id` (default: the first
    EOS id, else 0). Batched prompts must be left-padded. Images as for `logits`."""
    _text_only(ckpt, pixel_values, image_sizes)
    if isinstance(ckpt, VlmCheckpoint):
        return vlm_generate(ckpt, input_ids, max_new_tokens, eos_token_id, attention_mask,
                            pad_token_id, pixel_values, image_sizes)
    tokens, mask, eos, pad = generation_inputs(input_ids, attention_mask, max_new_tokens,
                                               eos_token_id, pad_token_id)
    new = greedy_generate(ckpt.params, ckpt.spec, tokens, mask, max_new_tokens=max_new_tokens,
                          eos_ids=eos, pad_id=pad)
    return np.concatenate([np.asarray(tokens), np.asarray(new)], axis=1)
