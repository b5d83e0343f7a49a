"""DFS forward passes over a source stack (see `stack.py`): P candidate paths in one compiled scan
over the slots, and one path over only its used layers.

Why one scan over slots serves the whole population (docs/design.md §2.2): slot t always
holds the same layer, so its weights are shared by every candidate; candidates differ only in
whether they use the slot and with what scale. A slot runs only for the candidates that use it:
their hidden states are gathered (users first, in candidate order), run through the layer `chunk`
candidates at a time in a loop whose trip count is the users' count (ceil(u / chunk) steps, so a
slot no candidate uses runs nothing), and scattered back; the others keep their state. One
compiled copy of the layer serves every count, so nothing recompiles as the population changes.
`chunk` = 1 runs exactly the used layers' FLOPs; a larger chunk makes larger matmuls at the cost
of up to chunk − 1 padded candidates per used slot, which pays when one candidate's tokens are
too few to fill a step (`auto_chunk`, the default: decode steps, tiny batches).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..arch import ModelSpec
from ..checkpoint import Checkpoint
from ..errors import ConfigError
from ..model import (Context, decoder_layer, embed, make_context, positions_from_mask,
                     sliding_flags, unembed)
from .genome import PathSpec, decode_population
from ..vision_splice import with_image
from .path import LayerPath


def _layer(layers: dict, layer) -> dict:
    """The weights of one (traced) global layer id from the stack [M, ...]."""
    return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, layer, 0, keepdims=False), layers)


# Tokens a chunk should hold at least when `chunk` is chosen from the shapes: below this a layer's
# step is bound by per-step overhead, not FLOPs (benchmarks/bench_dfs.py, README).
MIN_CHUNK_TOKENS = 256


def auto_chunk(p: int, tokens: int) -> int:
    """Candidates per chunk for P candidates of `tokens` (B·S) each: one when a candidate alone
    fills a chunk, else enough for MIN_CHUNK_TOKENS, at most P."""
    return max(1, min(p, -(-MIN_CHUNK_TOKENS // max(1, tokens))))


def run_slots(params: dict, spec: ModelSpec, slot_layer_n, used_pn, scale_pn, h_pbsd,
              ctx: Context, caches=None, cache_index=0, chunk: int | None = None):
    """Apply n slots in order to P candidates' hidden states [P, B, S, D].

    Slot k runs global layer `slot_layer_n[k]` on `scale_pn[:, k]` × h for the candidates with
    `used_pn[:, k]` only, `chunk` candidates per step of a loop (see the module doc; None:
    `auto_chunk` of the shapes); the others keep h. `caches` (k, v), each [n, P, B, T, N, E],
    hold one KV cache per slot, written for the candidates that run the slot. Returns
    (h [P, B, S, D], caches).
    """
    p, b, s = h_pbsd.shape[:3]
    chunk = auto_chunk(p, b * s) if chunk is None else chunk
    if chunk < 1:
        raise ConfigError(f"DFS pass chunk must be at least 1 candidate, got {chunk}")
    flags_m = sliding_flags(spec)

    def step(h, xs):
        layer, used_p, scale_p, cache = xs
        lp, is_sliding = _layer(params["layers"], layer), flags_m[layer]
        count = jnp.sum(used_p, dtype=jnp.int32)
        # The users first, in candidate order; every other place points past the end (index P):
        # a padded row of the last chunk is computed from a clipped gather and dropped.
        order = jnp.argsort(~used_p, stable=True).astype(jnp.int32)
        order = jnp.pad(jnp.where(jnp.arange(p) < count, order, p), (0, chunk),
                        constant_values=p)
        take = partial(jnp.take, axis=0, mode="clip")

        def run_chunk(i, carry):
            h, cache = carry
            idx = jax.lax.dynamic_slice(order, (i * chunk,), (chunk,))
            x = take(h, idx) * take(scale_p, idx).astype(h.dtype)[:, None, None, None]
            out, new_cache = jax.vmap(
                lambda x_bsd, c: decoder_layer(lp, spec, x_bsd, ctx, is_sliding, c, cache_index)
            )(x, jax.tree.map(lambda c: take(c, idx), cache))
            put = lambda full, part: full.at[idx].set(part, mode="drop")  # noqa: E731
            return put(h, out), jax.tree.map(put, cache, new_cache)

        return jax.lax.fori_loop(0, (count + chunk - 1) // chunk, run_chunk, (h, cache))

    return jax.lax.scan(step, h_pbsd, (slot_layer_n, used_pn.T, scale_pn.T, caches))


def prompt_context(spec: ModelSpec, tokens_bs, mask_bs) -> Context:
    positions = positions_from_mask(mask_bs)
    index = jnp.broadcast_to(jnp.arange(tokens_bs.shape[1]), tokens_bs.shape)
    return make_context(spec, positions, mask_bs, index)


def window_slots(path_spec: PathSpec, spec: ModelSpec, decoded):
    """The slot table of the usable window: (layer ids [n], used [P, n], scales [P, n])."""
    if path_spec.num_layers != spec.num_layers:
        raise ConfigError(f"DFS path spec has {path_spec.num_layers} layers, the source stack has "
                          f"{spec.num_layers}: build both from the same sources")
    lo, hi = path_spec.window
    return (jnp.asarray(path_spec.slot_layers[lo:hi], jnp.int32), decoded.used_t[:, lo:hi],
            decoded.scale_t[:, lo:hi])


@partial(jax.jit, static_argnames=("spec", "path_spec", "chunk"))
def population_hidden(params: dict, spec: ModelSpec, path_spec: PathSpec, genomes_pd, tokens_bs,
                      mask_bs, image=None, chunk: int | None = None) -> jax.Array:
    """Final hidden states [P, B, S, D] (before the final norm) of P genomes, decoded on device:
    the hook for task metrics that work on hidden states. `image`: (embeds, mask) spliced into
    the embeddings (a VLM's image features, vision_splice.py); `chunk`: see `run_slots`."""
    slot_layer_n, used_pn, scale_pn = window_slots(
        path_spec, spec, decode_population(path_spec, genomes_pd))
    h_bsd = with_image(embed(params, spec, tokens_bs), image)
    h_pbsd = jnp.broadcast_to(h_bsd, (used_pn.shape[0],) + h_bsd.shape)
    h, _ = run_slots(params, spec, slot_layer_n, used_pn, scale_pn, h_pbsd,
                     prompt_context(spec, tokens_bs, mask_bs), chunk=chunk)
    return h


@partial(jax.jit, static_argnames=("spec", "path_spec", "chunk"))
def population_logits(params: dict, spec: ModelSpec, path_spec: PathSpec, genomes_pd, tokens_bs,
                      mask_bs, chunk: int | None = None) -> jax.Array:
    """Logits [P, B, S, V] (float32) of P genomes, with A's final norm and LM head."""
    h = population_hidden(params, spec, path_spec, genomes_pd, tokens_bs, mask_bs, chunk=chunk)
    return jax.vmap(lambda h_bsd: unembed(params, spec, h_bsd))(h)


@partial(jax.jit, static_argnames=("spec",))
def path_hidden(params: dict, spec: ModelSpec, layer_n, scale_n, used_n, tokens_bs,
                mask_bs) -> jax.Array:
    """One path, running only its used layers: hidden states [B, S, D] before the final norm.

    The step arrays [n] may be padded past the path's end with `used_n` False: a padded step runs
    no chunk and costs nothing, and padding to a few bucket lengths saves the compile
    that each distinct path length would otherwise need."""
    h, _ = run_slots(params, spec, layer_n, used_n[None], scale_n[None],
                     embed(params, spec, tokens_bs)[None], prompt_context(spec, tokens_bs, mask_bs))
    return h[0]


@partial(jax.jit, static_argnames=("spec",))
def path_logits(params: dict, spec: ModelSpec, layer_n, scale_n, used_n, tokens_bs,
                mask_bs) -> jax.Array:
    return unembed(params, spec, path_hidden(params, spec, layer_n, scale_n, used_n, tokens_bs,
                                             mask_bs))


def path_arrays(path: LayerPath, spec: ModelSpec, length: int | None = None):
    """(layer ids [n] int32, scales [n] float32, used [n] bool) of a host path, padded to `length`
    steps (default: the next power of two), checked against the stack."""
    if sum(path.source_layers) != spec.num_layers:
        raise ConfigError(f"DFS path is over {sum(path.source_layers)} layers, the source stack "
                          f"has {spec.num_layers}: build both from the same sources")
    n = path.num_steps
    length = length or 1 << (n - 1).bit_length()
    if length < n:
        raise ConfigError(f"cannot pad a path of {n} steps to {length}")
    pad = length - n
    return (jnp.asarray(np.pad(np.asarray(path.layers), (0, pad)), jnp.int32),
            jnp.asarray(np.pad(np.asarray(path.scales), (0, pad)), jnp.float32),
            jnp.asarray(np.arange(length) < n))


def logits_of_path(stack: Checkpoint, path: LayerPath, input_ids, attention_mask=None,
                   length: int | None = None) -> jax.Array:
    """Logits [B, S, V] of one host path (the reference the population pass is tested against);
    `length` pads the steps (see `path_arrays`)."""
    tokens = jnp.asarray(np.atleast_2d(np.asarray(input_ids)), jnp.int32)
    mask = jnp.ones_like(tokens) if attention_mask is None else jnp.asarray(
        np.atleast_2d(np.asarray(attention_mask)), jnp.int32)
    layer_n, scale_n, used_n = path_arrays(path, stack.spec, length)
    return path_logits(stack.params, stack.spec, layer_n, scale_n, used_n, tokens, mask)
