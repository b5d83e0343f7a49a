"""Numerical helpers shared by the merge methods.

Shape legend for the whole `evomerge_jax.merge` package:
  K  sources (non-base models), always the first axis of a stacked array (`sources_k...`)
  N  elements of one tensor, flattened (`table_kn`)
  R  rows of a tensor in Hugging Face orientation ([out, in]: rows = first axis), C = row length
  ...  the tensor's own axes

A row view (`as_rows`) turns a tensor into [R, C]: a 1-D tensor is one row, a 2-D tensor keeps its
rows, higher ranks keep the first axis and flatten the rest.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def compute_dtype(*arrays) -> jnp.dtype:
    """float64 when any input is float64 (docs/merge_semantics.md §1), else
    float32: half precision inputs are upcast so the merge arithmetic never runs in bf16/fp16."""
    dtypes = (a.dtype if hasattr(a, "dtype") else np.asarray(a).dtype for a in arrays if a is not None)
    canonical = (jax.dtypes.canonicalize_dtype(dtype) for dtype in dtypes)
    if any(dtype == jnp.float64 for dtype in canonical):  # float64 survives only with jax x64 on
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def concrete_or_none(x) -> np.ndarray | None:
    """`x` as a numpy array when its value is known now, None when it is traced (jit/vmap).

    Used for checks that mergekit raises on (a bad della epsilon, a degenerate multislerp mean) and
    for counting kept elements in float64 as mergekit does. Under tracing a check cannot raise, so
    callers document what the traced path does instead.
    """
    if isinstance(x, jax.core.Tracer):
        return None
    try:
        return np.asarray(x)
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def per_source(values_k, ndim: int, dtype) -> jax.Array:
    """A per-source vector [K] reshaped to [K, 1, ..., 1] so it broadcasts against `sources_k...`."""
    return jnp.asarray(values_k, dtype).reshape((-1,) + (1,) * ndim)


def as_rows(x: jax.Array) -> jax.Array:
    """[...] -> [R, C]; see the module docstring for which axis is a row."""
    if x.ndim <= 1:
        return x.reshape(1, -1)
    return x.reshape(x.shape[0], -1)


def sign_agreement(values_k: jax.Array) -> jax.Array:
    """TIES sign election with the `sum` consensus (docs/merge_semantics.md §2, step 4).

    s = sign(sum_k values), a zero sum counting as +1; the mask is sign(values_k) == s, so exact
    zeros (pruned elements) never agree. values_k: [K, ...] -> bool [K, ...].
    """
    elected = jnp.where(jnp.sum(values_k, axis=0) >= 0, 1.0, -1.0).astype(values_k.dtype)
    return jnp.sign(values_k) == elected


def norm(x: jax.Array, axis=None, keepdims: bool = False) -> jax.Array:
    """Euclidean norm; axis None means the whole tensor as one vector."""
    return jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=keepdims))
