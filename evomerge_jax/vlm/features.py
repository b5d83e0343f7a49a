"""Image embeddings placed at the image-token positions of `input_ids`: what a LLaVA forward
splices into the language model's token embeddings (`model.splice_embeds`).

The vision tower and projector are frozen, so a search computes these once per batch and shares
them across candidates. For LLaVA-1.5 `image_embeds` is pure jnp (jittable with the spec static).
For LLaVA-NeXT the tile counts and the unpadding depend on each image's size: that part
(`anyres.pack_image`) runs on the host between one jitted call over all tiles and the placement.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import EvomergeError
from . import anyres, vision
from .spec import VlmSpec


def project(projector_params: dict, spec: VlmSpec, features):
    """The two-layer projector: linear, activation, linear."""
    p = projector_params
    h = jnp.einsum("...i,oi->...o", features, p["w1"]) + p.get("b1", 0)
    h = vision.ACTIVATIONS[spec.projector_act](h)
    return jnp.einsum("...i,oi->...o", h, p["w2"]) + p.get("b2", 0)


@partial(jax.jit, static_argnames=("spec",))
def tile_features(vision_params: dict, projector_params: dict, spec: VlmSpec, pixels_nchw):
    """Projected features of image tiles [N, C, H, W] -> [N, T, text hidden]: the selected
    hidden states concatenated on features, the first (CLS) token dropped by `default`."""
    hs = vision.hidden_states(vision_params, spec.vision, pixels_nchw, max(spec.feature_layers))
    selected = jnp.concatenate([hs[i] for i in spec.feature_layers], axis=-1)
    if spec.select_strategy == "default":
        selected = selected[:, 1:]
    return project(projector_params, spec, selected)


@partial(jax.jit, static_argnames=("image_token_id",))
def place_features(features_nd, input_ids_bs, image_token_id: int):
    """Rows of `features_nd` in order at the image-token positions (row-major over the batch, as
    transformers' masked_scatter puts them); zeros elsewhere. Returns (embeds [B, S, D], mask)."""
    mask = jnp.asarray(input_ids_bs) == image_token_id
    index = jnp.cumsum(mask.reshape(-1)) - 1
    if features_nd.shape[0] == 0:
        return jnp.zeros(mask.shape + (features_nd.shape[-1],), jnp.float32), mask
    gathered = features_nd[jnp.clip(index, 0, features_nd.shape[0] - 1)].reshape(
        mask.shape + (features_nd.shape[-1],))
    return jnp.where(mask[..., None], gathered, 0).astype(jnp.float32), mask


def _next_features(vision_params, projector_params, spec: VlmSpec, pixel_values, image_sizes):
    if image_sizes is None:
        raise EvomergeError(f"{spec.architecture} needs image_sizes with pixel_values")
    sizes = np.asarray(image_sizes).reshape(-1, 2)
    pixels = np.asarray(pixel_values)
    counts = [anyres.num_tiles(spec, s) for s in sizes]
    if pixels.ndim == 5:  # [images, max tiles, C, H, W], padded: keep each image's own tiles
        if len(pixels) != len(sizes):
            raise EvomergeError(f"pixel_values has {len(pixels)} images, image_sizes {len(sizes)}")
        pixels = np.concatenate([p[:n] for p, n in zip(pixels, counts)], axis=0)
    elif pixels.ndim != 4 or len(pixels) != sum(counts):
        raise EvomergeError(f"pixel_values of shape {pixels.shape} does not hold the "
                            f"{sum(counts)} tiles image_sizes call for")
    feats = np.asarray(tile_features(vision_params, projector_params, spec, jnp.asarray(pixels)))
    starts = np.cumsum([0, *counts])
    newline = np.asarray(projector_params["image_newline"])
    packed = [anyres.pack_image(spec, feats[a:b], s, newline)
              for a, b, s in zip(starts[:-1], starts[1:], sizes)]
    return jnp.asarray(np.concatenate(packed, axis=0))


def image_embeds(vision_params: dict, projector_params: dict, spec: VlmSpec, input_ids,
                 pixel_values, image_sizes=None):
    """(image_embeds [B, S, text hidden] float32, image_mask [B, S] bool): every image's projected
    features at its image tokens (one token per feature, as the processor expands them), zeros and
    False elsewhere; rows without images are all False. `pixel_values`: [images, C, H, W] for
    LLaVA-1.5; [images, tiles, C, H, W] (or the tiles concatenated) with `image_sizes` [images, 2]
    (height, width) for LLaVA-NeXT. None: text only."""
    dim = spec.text.hidden_size
    images = pixel_values is not None and np.shape(pixel_values)[0] > 0
    if not isinstance(input_ids, jax.core.Tracer):  # checked before the tower runs
        tokens = int(np.sum(np.asarray(input_ids) == spec.image_token_id))
        expected = 0 if not images else (
            sum(anyres.num_features(spec, s) for s in np.asarray(image_sizes).reshape(-1, 2))
            if spec.is_next and image_sizes is not None
            else np.shape(pixel_values)[0] * spec.tokens_per_tile)
        if tokens != expected:
            raise EvomergeError(f"input_ids hold {tokens} image tokens (id {spec.image_token_id}) "
                                f"but the images give {expected} features; encode prompts and "
                                "images with the model's processor (vlm/processor.py)")
    if not images:
        features = jnp.zeros((0, dim), jnp.float32)
    elif spec.is_next:
        features = _next_features(vision_params, projector_params, spec, pixel_values, image_sizes)
    else:
        features = tile_features(vision_params, projector_params, spec,
                                 jnp.asarray(pixel_values)).reshape(-1, dim)
    return place_features(features, input_ids, spec.image_token_id)
