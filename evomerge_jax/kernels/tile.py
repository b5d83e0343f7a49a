"""The tile body of the fused population merge: one candidate's task-vector merge of one tile.

A pure elementwise function of the tile's inputs and a few per-candidate scalars, shared by the
Pallas kernel (pallas_merge.py, on [bm, bn] tiles) and the pure-jnp reference (reference.py, on
the whole tensor as one tile). Every step follows `merge.task_arithmetic.task_vector_merge` and
`merge.sparsify` operation by operation, so the three agree bit for bit where no whole-tensor sum
is involved (docs/design.md §2.4). What is not tile-local (the TIES/breadcrumbs thresholds, DELLA's
per-row ranks, the L1 norms, the per-source keys) arrives precomputed from prepass.py:

  thresholds   `hi`, `lo` per source, and `cutoff` (magnitude: the flat index of the k-th largest
               |δ| in a stable descending order, which breaks ties by flat order as the merge does)
  relative     DELLA's per-row rank / (C − 1) of |δ|, per source ([K] tiles, shared by candidates)
  keys         raw uint32 key words of each source's mask (the hash generator of parallel/prng.py)
  l1           the L1 rescale factor of each source (1 where the rescale is skipped)
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from ..merge.task_arithmetic import DIVISOR_FLOOR
from ..parallel.prng import hash3

# Per-source scalar fields, in column order (column = field · K + k), then the globals.
SOURCE_FIELDS = ("weight", "density", "epsilon", "hi", "lo", "active", "l1")
GLOBAL_FIELDS = ("lambda", "normalize", "rescale")


@dataclass(frozen=True)
class MergeSteps:
    """The static steps of one task-vector preset (hashable: part of the kernel's identity)."""

    consensus: str | None        # "sum" or None
    sparsifier: str | None       # a name from merge.sparsify.SPARSIFIERS or None
    rescale_rule: str            # "l1" or "inverse_density"


def uniform_from_bits(bits):
    """jax.random.uniform's float32 in [0, 1) from 32 random bits (23 mantissa bits, 1.0 ≤ x < 2
    minus one), the same conversion, so masks equal `jax.random.bernoulli`'s."""
    mantissa = (bits >> jnp.uint32(9)) | jnp.uint32(0x3F800000)
    return jax.lax.bitcast_convert_type(mantissa, jnp.float32) - jnp.float32(1.0)


def kept_sources(steps: MergeSteps, base, sources, relative, flat_index, get):
    """Each source's sparsified task vector before any rescale, and its keep probability.

    base [..]; sources, relative: K arrays shaped like base (relative: None unless DELLA);
    flat_index: uint32 element index in the tensor's flat order; get(field, k) -> scalar.
    Returns (deltas, kept, probabilities): K arrays each (probabilities: scalars or arrays).
    """
    deltas, kept, probabilities = [], [], []
    for k, source in enumerate(sources):
        delta = source - base
        deltas.append(delta)
        density = get("density", k)
        probability = density
        name = steps.sparsifier
        if name is None:
            kept.append(delta)
            probabilities.append(probability)
            continue
        magnitude = jnp.abs(delta)
        if name == "magnitude":
            threshold, cutoff = get("hi", k), get("cutoff", k)
            tied = (magnitude == threshold) & (flat_index <= cutoff)
            mask = ((magnitude > threshold) | tied) & (density > 0)
        elif name == "magnitude_outliers":
            band = (magnitude <= get("hi", k)) & (magnitude >= get("lo", k))
            mask = band & (get("active", k) > 0)
        else:
            k0, k1 = get("key0", k), get("key1", k)
            uniform = uniform_from_bits(hash3(k0, k1, flat_index))
            if name == "random":
                mask = uniform < jnp.clip(density, 0.0, 1.0)
            else:  # della_magprune
                epsilon = get("epsilon", k)
                probability = (density - epsilon) + 2.0 * epsilon * relative[k]
                mask = (uniform < probability) & (density > 0)
        kept.append(jnp.where(mask, delta, 0.0))
        probabilities.append(probability)
    return deltas, kept, probabilities


def merge_tile(steps: MergeSteps, base, sources, relative, flat_index, get, out_dtype):
    """One candidate's merged tile, cast to `out_dtype` (steps 1-6 of merge_semantics.md §2)."""
    deltas, kept, probabilities = kept_sources(steps, base, sources, relative, flat_index, get)
    rescale_on = get("rescale") > 0
    vectors = []
    for k, (delta, kept_k, probability) in enumerate(zip(deltas, kept, probabilities)):
        if steps.sparsifier is None:
            vectors.append(delta)
            continue
        if steps.rescale_rule == "l1":
            rescaled = kept_k * get("l1", k)
        else:
            rescaled = jnp.where(probability > 0,
                                 kept_k / jnp.where(probability > 0, probability, 1.0), 0.0)
        kept_k = jnp.where(rescale_on, rescaled, kept_k)
        vectors.append(jnp.where(get("density", k) < 1, kept_k, delta))
    weights = [get("weight", k) for k in range(len(sources))]
    weighted = jnp.stack([w * v for w, v in zip(weights, vectors)])
    if steps.consensus == "sum":
        elected = jnp.where(jnp.sum(weighted, axis=0) >= 0, 1.0, -1.0).astype(weighted.dtype)
        agree = jnp.sign(weighted) == elected
        merged = jnp.sum(jnp.where(agree, weighted, 0.0), axis=0)
        weight_k = jnp.stack([jnp.broadcast_to(w, base.shape) for w in weights])
        divisor = jnp.sum(jnp.where(agree, weight_k, 0.0), axis=0)
        divisor = jnp.where(divisor == 0, 1.0, divisor)
    else:
        merged = jnp.sum(weighted, axis=0)
        divisor = jnp.sum(jnp.stack(weights))
        divisor = jnp.where(jnp.abs(divisor) < DIVISOR_FLOOR, 1.0, divisor)
    merged = jnp.where(get("normalize") > 0, merged / divisor, merged)
    return (base + get("lambda") * merged).astype(out_dtype)


def kept_l1_tile(steps: MergeSteps, base, sources, relative, flat_index, get, valid):
    """Σ|kept| of each source over the tile's valid elements: [K] (the L1 rescale's denominator)."""
    _, kept, _ = kept_sources(steps, base, sources, relative, flat_index, get)
    return jnp.stack([jnp.sum(jnp.where(valid, jnp.abs(x), 0.0)) for x in kept])
