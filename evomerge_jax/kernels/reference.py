"""The pure-jnp reference of the fused merge: the tile body applied to the whole tensor as one
tile, vmapped over the candidates. XLA fuses it as it likes (the better choice on CPU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .layout import ScalarLayout
from .tile import MergeSteps, kept_l1_tile, merge_tile


def flat_indices(rows: int, cols: int):
    r = jax.lax.broadcasted_iota(jnp.uint32, (rows, cols), 0)
    c = jax.lax.broadcasted_iota(jnp.uint32, (rows, cols), 1)
    return r * jnp.uint32(cols) + c


def _per_candidate(fn, layout: ScalarLayout, floats_pf, words_pu):
    def one(floats_f, words_u):
        return fn(layout.getter(lambda col: floats_f[col], lambda col: words_u[col]))
    return jax.vmap(one)(floats_pf, words_pu)


def reference_kept_l1(steps: MergeSteps, base_rc, sources_krc, relative_krc, floats_pf, words_pu):
    """[P, K] Σ|kept| of each candidate's sparsified sources."""
    layout = ScalarLayout(sources_krc.shape[0])
    flat = flat_indices(*base_rc.shape)
    valid = jnp.ones(base_rc.shape, bool)
    sources, relative = list(sources_krc), None if relative_krc is None else list(relative_krc)
    return _per_candidate(lambda get: kept_l1_tile(steps, base_rc, sources, relative, flat, get,
                                                   valid), layout, floats_pf, words_pu)


def reference_merge(steps: MergeSteps, base_rc, sources_krc, relative_krc, floats_pf, words_pu,
                    out_dtype):
    """[P, R, C] merged tensors of the P candidates."""
    layout = ScalarLayout(sources_krc.shape[0])
    flat = flat_indices(*base_rc.shape)
    sources, relative = list(sources_krc), None if relative_krc is None else list(relative_krc)
    return _per_candidate(lambda get: merge_tile(steps, base_rc, sources, relative, flat, get,
                                                 out_dtype), layout, floats_pf, words_pu)
