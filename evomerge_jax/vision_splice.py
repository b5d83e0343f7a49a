"""The one place a population pass meets a VLM's images: the image features (computed once per
batch from the frozen vision tower and projector, evolve/vision.py) replace the embeddings at the
image-token positions of every candidate's embedded prompt, as LLaVA does before its language
model. A batch without images passes `image=None` and the pass is the text-only one."""

from __future__ import annotations

import jax.numpy as jnp


def with_image(h, image):
    """h [..., B, S, D] with the positions of `image` = (embeds [B, S, D], mask [B, S]) replaced
    by the embeds (cast to h's dtype); h unchanged when `image` is None."""
    if image is None:
        return h
    embeds, mask = image
    return jnp.where(jnp.asarray(mask, bool)[..., None], jnp.asarray(embeds).astype(h.dtype), h)
