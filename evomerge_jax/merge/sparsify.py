"""Sparsifiers of one task vector δ = X − B (docs/merge_semantics.md §2, step 2).

- magnitude: keep the k = int(d·n) largest |δ| (TIES, Yadav et al. 2023, arXiv:2306.01708, §3 "Trim").
- random: keep each element with probability d (DARE, Yu et al. 2023, arXiv:2311.03099, Eq. 2).
- magnitude_outliers: drop the γ·n largest and enough of the smallest |δ| to keep d·n (Model
  Breadcrumbs, Davari & Belilovsky 2023, arXiv:2312.06795).
- della_magprune: per row, keep probability rising linearly with the magnitude rank from d − ε to
  d + ε (DELLA-Merging, Deep et al. 2024, arXiv:2406.11617, §3.1 "MagPrune").

Fast trimming (docs/design.md §2.1): the magnitude and breadcrumbs masks are a compare against
thresholds gathered from `magnitude_table(δ)`, the sorted magnitudes computed once per source
tensor, so any number of candidate densities costs one sort. The magnitude mask keeps exactly k
elements, like a full top-k; where several elements share the threshold magnitude it keeps the first
ones in flat order, while torch's top-k (mergekit) picks an unspecified subset, so single elements
may differ.
The breadcrumbs band keeps every element tied at its two thresholds.

Densities may be traced scalars (jit/vmap over a population). int(d·n) is evaluated in the
precision of d: a Python float or float64 d gives mergekit's count exactly (it multiplies Python
floats); a float32 d, traced or not, is counted in float32, so a genome's merge is the same in
evaluation and in export, but k can differ by one from mergekit's count for the decimal d when d·n
lies within float32 rounding of an integer (e.g. float32(0.45)·240 gives 108, float64 107.99…).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from evomerge_jax.errors import MergeError
from evomerge_jax.merge.numerics import as_rows, concrete_or_none


@dataclass(frozen=True)
class Sparsifier:
    """What a sparsifier needs: the one place the merge, the PS pass, the planner and the config
    read these properties from."""

    name: str
    random: bool                 # draws its mask from a key (DARE, DELLA)
    uses_table: bool             # thresholds from each task vector's sorted magnitudes (TIES, ...)
    reads: tuple[str, ...]       # the per-source parameters it reads


SPARSIFIERS: dict[str, Sparsifier] = {s.name: s for s in (
    Sparsifier("magnitude", random=False, uses_table=True, reads=("density",)),
    Sparsifier("random", random=True, uses_table=False, reads=("density",)),
    Sparsifier("magnitude_outliers", random=False, uses_table=True, reads=("density", "gamma")),
    Sparsifier("della_magprune", random=True, uses_table=False, reads=("density", "epsilon")),
)}
RESCALE_RULES = ("l1", "inverse_density")
# mergekit skips the L1 rescale when either norm is below this (merge_semantics.md §2, step 2).
L1_RESCALE_FLOOR = 1e-7


def keep_count(fraction, n: int) -> jax.Array:
    """floor(fraction · n) as int32, the `int(d·n)` of docs/merge_semantics.md §2, clipped to
    [0, n], with the product in the precision of `fraction` (see the module docstring)."""
    value = concrete_or_none(fraction)
    if value is not None:
        if not np.issubdtype(value.dtype, np.floating):
            value = value.astype(np.float64)
        count = np.floor(value * value.dtype.type(n))  # the product rounds in d's own precision
        return jnp.asarray(np.clip(count, 0, n).astype(np.int32))
    fraction = jnp.asarray(fraction)
    count = jnp.floor(fraction * jnp.asarray(n, fraction.dtype))
    return jnp.clip(count, 0, n).astype(jnp.int32)


def magnitude_table(delta: jax.Array) -> jax.Array:
    """|δ| flattened and sorted in descending order: [N]. Compute once per source tensor."""
    return jnp.sort(jnp.abs(delta).ravel())[::-1]


def sorted_value_at(table_n: jax.Array, index) -> jax.Array:
    """table_n[index] with a traced index clipped into range (a gather, not a sort)."""
    index = jnp.clip(jnp.asarray(index, jnp.int32), 0, table_n.shape[0] - 1)
    return jax.lax.dynamic_index_in_dim(table_n, index, keepdims=False)


def magnitude_mask(delta: jax.Array, density, table: jax.Array | None = None) -> jax.Array:
    """Keep the k = int(d·n) largest |δ|; d <= 0 keeps nothing, otherwise k >= 1.

    `table` is `magnitude_table(delta)`; pass it when many densities share one tensor.
    Returns a bool mask shaped like `delta`.
    """
    table_n = magnitude_table(delta) if table is None else table
    n = delta.size
    count = jnp.maximum(keep_count(density, n), 1)  # k >= 1 whenever d > 0
    threshold = sorted_value_at(table_n, count - 1)
    magnitude = jnp.abs(delta)
    above = magnitude > threshold
    # Several elements may share the threshold magnitude (common in bf16, and in float32 tensors
    # of millions of elements). Keep exactly k, as top-k does: the tied elements first in flat
    # order fill the remaining places. A cumulative sum, not a sort.
    tied = magnitude == threshold
    places = count - jnp.sum(above)
    tied_rank = jnp.cumsum(tied.ravel()).reshape(delta.shape)
    return (above | (tied & (tied_rank <= places))) & (jnp.asarray(density) > 0)


def outlier_mask(delta: jax.Array, density, gamma, table: jax.Array | None = None) -> jax.Array:
    """Model Breadcrumbs: with target = int(d·n), top = int(γ·n) and
    bottom = max(0, n − target − top), keep ascending-sorted positions [bottom, bottom + target).

    In the descending table that band is positions [n − bottom − target, n − 1 − bottom], so the
    mask is two compares against thresholds gathered from the table.
    """
    table_n = magnitude_table(delta) if table is None else table
    n = delta.size
    target = keep_count(density, n)
    top = keep_count(gamma, n)
    bottom = jnp.maximum(0, n - target - top)
    upper = sorted_value_at(table_n, n - bottom - target)  # largest kept magnitude
    lower = sorted_value_at(table_n, n - 1 - bottom)  # smallest kept magnitude
    magnitude = jnp.abs(delta)
    return (magnitude <= upper) & (magnitude >= lower) & (target > 0)


def random_mask(delta: jax.Array, density, key: jax.Array) -> jax.Array:
    """DARE: keep each element independently with probability d."""
    probability = jnp.clip(jnp.asarray(density, delta.dtype), 0.0, 1.0)
    return jax.random.bernoulli(key, probability, delta.shape)


def della_probabilities(delta: jax.Array, density, epsilon) -> jax.Array:
    """DELLA MagPrune keep probabilities: per row, rank |δ| ascending, r = rank / (C − 1) (the
    (rank − min)/(max − min) of merge_semantics.md §2), p = (d − ε) + 2ε·r. Shaped like `delta`."""
    rows_rc = as_rows(jnp.abs(delta))
    ranks_rc = jnp.argsort(jnp.argsort(rows_rc, axis=-1), axis=-1).astype(delta.dtype)
    width = rows_rc.shape[-1] - 1
    relative_rc = ranks_rc / width if width > 0 else jnp.zeros_like(ranks_rc)
    density = jnp.asarray(density, delta.dtype)
    epsilon = jnp.asarray(epsilon, delta.dtype)
    return ((density - epsilon) + 2.0 * epsilon * relative_rc).reshape(delta.shape)


def check_della(density, epsilon) -> None:
    """mergekit rejects 0 < d < 1 with d − ε <= 0 or d + ε >= 1 (d <= 0 simply prunes all). A
    check on concrete values only: a traced population must keep d ± ε inside (0, 1) itself;
    probabilities outside [0, 1] then act as 0 or 1."""
    d, eps = concrete_or_none(density), concrete_or_none(epsilon)
    if d is None or eps is None:
        return
    d, eps = np.broadcast_arrays(d, eps)
    bad = (d > 0) & (d < 1) & ((d - eps <= 0) | (d + eps >= 1))  # d <= 0 prunes everything
    if np.any(bad):
        i = int(np.argmax(bad))
        raise MergeError(
            f"della: density ± epsilon must lie inside (0, 1), got density={float(d.flat[i])} "
            f"epsilon={float(eps.flat[i])}; lower epsilon or move density away from 0 and 1"
        )


def rescale(delta, kept, rule: str, keep_probability):
    """Restore the magnitude lost by dropping elements.

    "l1" (mergekit's rule): multiply by ||δ||₁ / ||kept||₁, skipped when either is below 1e-7.
    "inverse_density" (the DARE paper's Eq. 2): divide by the keep probability (d, or DELLA's
    per-element p), which preserves the expectation instead of the norm.
    """
    if rule == "l1":
        before, after = jnp.sum(jnp.abs(delta)), jnp.sum(jnp.abs(kept))
        ok = (before >= L1_RESCALE_FLOOR) & (after >= L1_RESCALE_FLOOR)
        return kept * jnp.where(ok, before / jnp.where(ok, after, 1.0), 1.0)
    if rule == "inverse_density":
        p = jnp.asarray(keep_probability, kept.dtype)
        return jnp.where(p > 0, kept / jnp.where(p > 0, p, 1.0), 0.0)
    raise MergeError(f"unknown rescale rule {rule!r}; choose one of {', '.join(RESCALE_RULES)}")


def sparsify(delta, density, method: str, *, key=None, table=None, gamma=0.01, epsilon=0.15,
             rescale_on=False, rescale_rule: str = "l1"):
    """Sparsify one task vector when `method` is set and d < 1 (else return δ unchanged).

    `rescale_on` may be a traced bool. `key` is required by "random" and "della_magprune".
    """
    if method not in SPARSIFIERS:
        raise MergeError(f"unknown sparsifier {method!r}; choose one of {', '.join(SPARSIFIERS)}")
    if SPARSIFIERS[method].random and key is None:
        raise MergeError(f"sparsifier {method!r} is random: pass a jax PRNG key")
    keep_probability = jnp.asarray(density, delta.dtype)
    if method == "magnitude":
        mask = magnitude_mask(delta, density, table)
    elif method == "magnitude_outliers":
        mask = outlier_mask(delta, density, gamma, table)
    elif method == "random":
        mask = random_mask(delta, density, key)
    else:
        check_della(density, epsilon)
        keep_probability = della_probabilities(delta, density, epsilon)
        mask = jax.random.uniform(key, delta.shape, delta.dtype) < keep_probability
        mask = mask & (jnp.asarray(density) > 0)  # d <= 0 keeps nothing, whatever ε says
    kept = jnp.where(mask, delta, 0.0)
    kept = jnp.where(rescale_on, rescale(delta, kept, rescale_rule, keep_probability), kept)
    return jnp.where(jnp.asarray(density) < 1, kept, delta)
