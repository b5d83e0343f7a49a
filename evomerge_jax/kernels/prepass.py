"""The per-tensor pre-pass of the fused merge, in jnp: everything that is not tile-local.

TIES' trim keeps the k largest |δ| of a whole tensor, breadcrumbs a band of its sorted magnitudes,
DELLA ranks |δ| along each row, and the L1 rescale divides by whole-tensor norms. None of these
is a function of one tile, so they run here, once per tensor, and reduce to a few scalars per
(candidate, source) or to one candidate-independent array per source:

  magnitude           a stable descending argsort of |δ| per source (shared by the P candidates),
                      then per candidate a gather: threshold |δ| and flat-index cutoff of the k-th
  magnitude_outliers  the sorted magnitudes (the PS pass's precomputed tables when given), then per
                      candidate the band's two thresholds
  della_magprune      per source, the per-row relative rank of |δ| ([R, C], shared)
  random masks        per candidate, each source's raw key words (`jax.random.split` of its key)
  L1 rescale          per source Σ|δ| (shared); Σ|kept| comes from a reduction kernel

The tile kernel then does the masking, sign election, weighting and summation in one pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import MergeError
from ..merge.methods import REQUIRED, get_method
from ..merge.numerics import as_rows, concrete_or_none
from ..merge.sparsify import L1_RESCALE_FLOOR, check_della, keep_count, sorted_value_at


def resolve_params(method_name: str, params: dict, num_candidates: int, num_sources: int):
    """Each parameter of the method for every candidate: per-source ones [P, K], globals [P].

    A value may be a scalar, [K] / [P] or [P, K] (per-source) and [P] (global); concrete values
    stay numpy in their own precision, as in `merge_tensor`, so int(d·n) counts alike.
    """
    method = get_method(method_name)
    unknown = sorted(set(params) - set(method.per_source) - set(method.global_params))
    if unknown:
        raise MergeError(f"merge method {method_name!r} has no parameter {', '.join(unknown)}")
    resolved = {}
    for scope, shape in ((method.per_source, (num_candidates, num_sources)),
                         (method.global_params, (num_candidates,))):
        for name, default in scope.items():
            value = params.get(name, default)
            if value is REQUIRED:
                raise MergeError(f"merge method {method_name!r}: parameter {name!r} is required")
            concrete = concrete_or_none(value)
            array = jnp.asarray(value) if concrete is None else concrete
            if array.ndim == 1 and len(shape) == 2 and array.shape[0] == num_sources:
                array = array[None]  # [K]: the same for every candidate
            elif array.ndim == 1 and len(shape) == 2:
                array = array[:, None]
            xp = jnp if concrete is None else np
            if isinstance(default, bool):
                array = array != 0
            elif concrete is not None and not np.issubdtype(array.dtype, np.floating):
                array = array.astype(np.float64)
            resolved[name] = xp.broadcast_to(array, shape)
    return resolved


def source_keys(key_data_p2, num_sources: int, wrap_key):
    """[P, K, 2] uint32: the raw words of `jax.random.split(key, K)[k]` for each candidate, where
    key = wrap_key(key_data) is the candidate's typed key of this tensor."""
    def one(key_data):
        return jax.random.key_data(jax.random.split(wrap_key(key_data), num_sources))
    return jax.vmap(one)(key_data_p2).astype(jnp.uint32)


def magnitude_cutoffs(delta_kn, density_pk):
    """(threshold [P, K] float32, cutoff [P, K] uint32) of the TIES trim: with k = max(int(d·n), 1),
    the k-th largest |δ| in a stable descending order, and its flat index."""
    magnitude_kn = jnp.abs(delta_kn)
    order_kn = jnp.argsort(-magnitude_kn, axis=-1, stable=True)
    n = delta_kn.shape[-1]
    thresholds, cutoffs = [], []
    for k in range(delta_kn.shape[0]):
        count = jnp.maximum(keep_count(density_pk[:, k], n), 1)
        index = jnp.take(order_kn[k], count - 1)
        thresholds.append(jnp.take(magnitude_kn[k], index))
        cutoffs.append(index.astype(jnp.uint32))
    return jnp.stack(thresholds, 1), jnp.stack(cutoffs, 1)


def outlier_bands(delta_kn, density_pk, gamma_pk, table_kn=None):
    """(upper, lower, active) [P, K] of the breadcrumbs band (merge.sparsify.outlier_mask)."""
    if table_kn is None:
        table_kn = jnp.sort(jnp.abs(delta_kn), axis=-1)[:, ::-1]
    n = delta_kn.shape[-1]
    upper, lower, active = [], [], []
    for k in range(delta_kn.shape[0]):
        target = keep_count(density_pk[:, k], n)
        top = keep_count(gamma_pk[:, k], n)
        bottom = jnp.maximum(0, n - target - top)
        gather = jax.vmap(lambda i, k=k: sorted_value_at(table_kn[k], i))
        upper.append(gather(n - bottom - target))
        lower.append(gather(n - 1 - bottom))
        active.append((target > 0).astype(jnp.float32))
    return jnp.stack(upper, 1), jnp.stack(lower, 1), jnp.stack(active, 1)


def della_relative_ranks(delta_k_rc):
    """[K, R, C]: per row, rank(|δ|) / (C − 1) ascending (0 when C = 1), as della_probabilities."""
    ranks = jnp.argsort(jnp.argsort(jnp.abs(delta_k_rc), axis=-1), axis=-1)
    ranks = ranks.astype(delta_k_rc.dtype)
    width = delta_k_rc.shape[-1] - 1
    return ranks / width if width > 0 else jnp.zeros_like(ranks)


def check_della_population(density_pk, epsilon_pk) -> None:
    """mergekit's check on DELLA's (d, ε) where they are concrete (merge.sparsify.check_della)."""
    if concrete_or_none(density_pk) is not None and concrete_or_none(epsilon_pk) is not None:
        check_della(np.asarray(density_pk), np.asarray(epsilon_pk))


def l1_factors(abs_sum_k, kept_sum_pk):
    """[P, K] multiplier of the L1 rescale: Σ|δ| / Σ|kept|, 1 when either is below the floor."""
    before = abs_sum_k[None]
    ok = (before >= L1_RESCALE_FLOOR) & (kept_sum_pk >= L1_RESCALE_FLOOR)
    return jnp.where(ok, before / jnp.where(ok, kept_sum_pk, 1.0), 1.0)


def rows_of(x):
    """The tile view of a tensor: [R, C] (merge.numerics.as_rows: a 1-D tensor is one row)."""
    return as_rows(x)
