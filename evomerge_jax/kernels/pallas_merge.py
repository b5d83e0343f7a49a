"""The Pallas kernels of the fused merge: a grid of (candidate, row tile, column tile).

`merge_call` writes each candidate's merged tile, cast to the forward dtype, in one pass over the
base and source tiles (the sources are one [K, R, C] array read through K block specs, never
copied). `kept_l1_call` is the reduction the L1 rescale needs first: each program writes its tile's
Σ|kept| per source, summed over tiles in jnp. Edge tiles of shapes that the tile size does not
divide read undefined padding; the elementwise results there are dropped on write, and the
reduction masks them out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from .layout import ScalarLayout, pow2_at_least
from .tile import MergeSteps, kept_l1_tile, merge_tile

DEFAULT_TILE = (256, 512)


def tile_shape(rows: int, cols: int, tile) -> tuple[int, int]:
    """The block: the requested tile, shrunk to the tensor's power-of-two cover when smaller."""
    return min(tile[0], pow2_at_least(rows)), min(tile[1], pow2_at_least(cols))


def _specs(num_sources: int, has_relative: bool, block, layout: ScalarLayout):
    bm, bn = block
    tile = pl.BlockSpec((bm, bn), lambda p, i, j: (i, j))
    stacked = [pl.BlockSpec((None, bm, bn), lambda p, i, j, k=k: (k, i, j))
               for k in range(num_sources)]
    scalars = [pl.BlockSpec((1, layout.float_width), lambda p, i, j: (p, 0)),
               pl.BlockSpec((1, layout.word_width), lambda p, i, j: (p, 0))]
    return [tile, *stacked, *(stacked if has_relative else []), *scalars]


def _tile_inputs(refs, num_sources: int, has_relative: bool, layout: ScalarLayout, block, cols):
    base_ref, rest = refs[0], refs[1:]
    sources = [r[...] for r in rest[:num_sources]]
    relative = [r[...] for r in rest[num_sources:2 * num_sources]] if has_relative else None
    floats_ref, words_ref = rest[num_sources * (1 + has_relative):][:2]
    bm, bn = block
    rows = pl.program_id(1) * bm + jax.lax.broadcasted_iota(jnp.int32, block, 0)
    columns = pl.program_id(2) * bn + jax.lax.broadcasted_iota(jnp.int32, block, 1)
    flat = rows.astype(jnp.uint32) * jnp.uint32(cols) + columns.astype(jnp.uint32)
    get = layout.getter(lambda c: floats_ref[0, c], lambda c: words_ref[0, c])
    return base_ref[...], sources, relative, flat, get, rows, columns


def _operands(base_rc, sources_krc, relative_krc, floats_pf, words_pu):
    k = sources_krc.shape[0]
    relative = [] if relative_krc is None else [relative_krc] * k
    return (base_rc, *([sources_krc] * k), *relative, floats_pf, words_pu)


def merge_call(steps: MergeSteps, base_rc, sources_krc, relative_krc, floats_pf, words_pu,
               out_dtype, tile=DEFAULT_TILE, interpret: bool = False):
    """[P, R, C] merged tensors, in `out_dtype`."""
    (rows, cols), k, p = base_rc.shape, sources_krc.shape[0], floats_pf.shape[0]
    layout, block = ScalarLayout(k), tile_shape(rows, cols, tile)
    has_relative = relative_krc is not None

    def kernel(*refs):
        out_ref = refs[-1]
        base, sources, relative, flat, get, _, _ = _tile_inputs(
            refs[:-1], k, has_relative, layout, block, cols)
        out_ref[...] = merge_tile(steps, base, sources, relative, flat, get, out_dtype)[None]

    grid = (p, pl.cdiv(rows, block[0]), pl.cdiv(cols, block[1]))
    call = pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((p, rows, cols), out_dtype), grid=grid,
        in_specs=_specs(k, has_relative, block, layout),
        out_specs=pl.BlockSpec((1, *block), lambda p, i, j: (p, i, j)), interpret=interpret)
    return call(*_operands(base_rc, sources_krc, relative_krc, floats_pf, words_pu))


def kept_l1_call(steps: MergeSteps, base_rc, sources_krc, relative_krc, floats_pf, words_pu,
                 tile=DEFAULT_TILE, interpret: bool = False):
    """[P, K] Σ|kept| of each candidate's sparsified sources (partial sums per tile, then jnp)."""
    (rows, cols), k, p = base_rc.shape, sources_krc.shape[0], floats_pf.shape[0]
    layout, block = ScalarLayout(k), tile_shape(rows, cols, tile)
    has_relative = relative_krc is not None
    width = pow2_at_least(k, 8)
    tiles_c = pl.cdiv(cols, block[1])

    def kernel(*refs):
        out_ref = refs[-1]
        base, sources, relative, flat, get, r, c = _tile_inputs(
            refs[:-1], k, has_relative, layout, block, cols)
        sums = kept_l1_tile(steps, base, sources, relative, flat, get, (r < rows) & (c < cols))
        padded = jnp.concatenate([sums, jnp.zeros((width - k,), sums.dtype)])
        out_ref[...] = padded.reshape(1, 1, width)

    grid = (p, pl.cdiv(rows, block[0]), tiles_c)
    call = pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((p, grid[1] * tiles_c, width), floats_pf.dtype),
        grid=grid, in_specs=_specs(k, has_relative, block, layout),
        out_specs=pl.BlockSpec((1, 1, width), lambda p, i, j: (p, i * tiles_c + j, 0)),
        interpret=interpret)
    partial = call(*_operands(base_rc, sources_krc, relative_krc, floats_pf, words_pu))
    return jnp.sum(partial, axis=1)[:, :k]
