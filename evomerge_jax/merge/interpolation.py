"""The interpolation family (docs/merge_semantics.md §3): linear, slerp, nuslerp,
multislerp, karcher, and passthrough (one input, scaled).

linear is model soups (Wortsman et al. 2022, arXiv:2203.05482); slerp is Shoemake's spherical
interpolation (SIGGRAPH 1985); multislerp and karcher are its many-point generalisations, the
latter the Riemannian (Karcher / Fréchet) mean on the unit sphere (Karcher 1977).
Every function takes (base, sources_k [K, ...], params, key=None, **options) and returns [...].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evomerge_jax.errors import MergeError
from evomerge_jax.merge.numerics import concrete_or_none, norm, per_source

SLERP_DOT_THRESHOLD = 0.9995  # slerp falls back to lerp above this |cos| (nearly parallel)
SLERP_NORM_EPS = 1e-8  # slerp leaves vectors shorter than this unnormalised
NUSLERP_NORM_FLOOR = 1e-7  # nuslerp clamps norms here
NUSLERP_LERP_BELOW = 1e-16  # nuslerp uses lerp when 1 − cos² is at most this


def linear(base, sources_k, params, key=None):
    """Σ w_k X_k, divided by Σ w_k when `normalize` (default true). The base model, if any, is one
    of the stacked sources with its own weight, so `base` must be None here."""
    del base, key
    weight_k = per_source(params["weight"], sources_k.ndim - 1, sources_k.dtype)
    merged = jnp.sum(weight_k * sources_k, axis=0)
    return jnp.where(params["normalize"], merged / jnp.sum(weight_k), merged)


def _slerp_vectors(t, v0, v1):
    """Shoemake slerp of two flat vectors, lerp when nearly parallel (merge_semantics.md §3)."""
    def unit(v):
        length = norm(v)
        return jnp.where(length > SLERP_NORM_EPS, v / jnp.where(length > 0, length, 1.0), v)

    dot = jnp.sum(unit(v0) * unit(v1))
    theta = jnp.arccos(jnp.clip(dot, -1.0, 1.0))
    sin_theta = jnp.sin(theta)
    nearly_parallel = jnp.abs(dot) > SLERP_DOT_THRESHOLD
    safe_sin = jnp.where(nearly_parallel, 1.0, sin_theta)
    spherical = (jnp.sin((1 - t) * theta) / safe_sin) * v0 + (jnp.sin(t * theta) / safe_sin) * v1
    return jnp.where(nearly_parallel, (1 - t) * v0 + t * v1, spherical)


def slerp(base, sources_k, params, key=None):
    """Exactly two models: v0 = the base, v1 = the one source; global `t` (0 gives v0)."""
    del key
    t = jnp.asarray(params["t"], base.dtype)
    return _slerp_vectors(t, base.ravel(), sources_k[0].ravel()).reshape(base.shape)


def _nuslerp_pair(t, v0, v1, axis):
    """Slerp along `axis` (None = whole tensor): norms clamped at 1e-7, lerp only where
    1 − cos² <= 1e-16."""
    n0 = jnp.maximum(norm(v0, axis=axis, keepdims=True), NUSLERP_NORM_FLOOR)
    n1 = jnp.maximum(norm(v1, axis=axis, keepdims=True), NUSLERP_NORM_FLOOR)
    cos = jnp.clip(jnp.sum((v0 / n0) * (v1 / n1), axis=axis, keepdims=True), -1.0, 1.0)
    lerp_only = 1.0 - cos * cos <= NUSLERP_LERP_BELOW
    theta = jnp.arccos(cos)
    sin_theta = jnp.where(lerp_only, 1.0, jnp.sin(theta))
    spherical = (jnp.sin((1 - t) * theta) * v0 + jnp.sin(t * theta) * v1) / sin_theta
    return jnp.where(lerp_only, (1 - t) * v0 + t * v1, spherical)


def nuslerp(base, sources_k, params, key=None, *, nuslerp_flatten=True, nuslerp_row_wise=False):
    """Two sources with weights w1, w2: slerp at t = w2 / (w1 + w2) (0.5 when |w1 + w2| < 1e-6).
    With a base, slerp the task vectors and add B. Not flattened: one slerp per row (vectors along
    the last axis), or per column (vectors along the first axis) with `nuslerp_row_wise`."""
    del key
    w1, w2 = jnp.asarray(params["weight"], sources_k.dtype)
    total = w1 + w2
    t = jnp.where(jnp.abs(total) < 1e-6, 0.5, w2 / jnp.where(total == 0, 1.0, total))
    v0, v1 = sources_k if base is None else sources_k - base[None]
    if nuslerp_flatten or v0.ndim < 2:
        axis = None
    else:
        axis = 0 if nuslerp_row_wise else -1
    merged = _nuslerp_pair(t, v0, v1, axis)
    return merged if base is None else base + merged


def multislerp(base, sources_k, params, key=None):
    """Weighted spherical mean in one tangent step: unit vectors u_k, their weighted mean
    direction m, tangent τ = Σ w_k (u_k − (u_k·m) m), result m cos|τ| + τ sin|τ|/|τ|, scaled by
    Σ w_k |x_k|.
    With a base the inputs are task vectors and B is added back. When the mean direction vanishes
    (opposite inputs) two models fall back to the linear mix and more raise, as in mergekit; under
    tracing no error can be raised, so any number of models falls back to the linear mix."""
    del key
    num_sources = sources_k.shape[0]
    dtype = sources_k.dtype
    vectors_kn = sources_k.reshape(num_sources, -1)
    if base is not None:
        vectors_kn = vectors_kn - base.reshape(1, -1)
    eps = jnp.asarray(params["eps"], dtype)
    weight_k = jnp.asarray(params["weight"], dtype)
    weight_k = jnp.where(params["normalize_weights"], weight_k / jnp.sum(weight_k), weight_k)
    norms_k = norm(vectors_kn, axis=1)
    units_kn = vectors_kn / jnp.maximum(norms_k, eps)[:, None]
    mean_n = jnp.sum(weight_k[:, None] * units_kn, axis=0)
    mean_norm = norm(mean_n)
    degenerate = mean_norm < eps
    value = concrete_or_none(degenerate)
    if value is not None and bool(value) and num_sources > 2:
        raise MergeError("multislerp: the weighted mean of the unit vectors is ~0 for more than "
                         "two models (opposite inputs); use linear or change the weights")
    mean_n = mean_n / jnp.where(degenerate, 1.0, mean_norm)
    tangents_kn = units_kn - (units_kn @ mean_n)[:, None] * mean_n[None, :]
    tangent_n = jnp.sum(weight_k[:, None] * tangents_kn, axis=0)
    tangent_norm = norm(tangent_n)
    flat_tangent = tangent_norm < eps
    safe_norm = jnp.where(flat_tangent, 1.0, tangent_norm)
    # Exp map at the mean direction along the tangent (no move when the tangent vanishes).
    moved_n = mean_n * jnp.cos(tangent_norm) + tangent_n * (jnp.sin(tangent_norm) / safe_norm)
    direction_n = jnp.where(flat_tangent, mean_n, moved_n)
    spherical_n = direction_n * jnp.sum(weight_k * norms_k)
    # Two (nearly) opposite inputs have no mean direction: interpolate linearly instead.
    linear_n = jnp.sum(weight_k[:, None] * vectors_kn, axis=0)
    merged = jnp.where(degenerate, linear_n, spherical_n).reshape(sources_k.shape[1:])
    return merged if base is None else base + merged


def _normalised(v):
    length = norm(v)
    return v / jnp.where(length > 0, length, 1.0)


def _karcher_step(_, carry):
    """One Riemannian gradient step; frozen once |gradient| < tol. A module-level function (not a
    closure) so eager calls reuse the compiled loop body."""
    mean_n, done, units_kn, tol = carry
    cos_k = jnp.clip(units_kn @ mean_n, -1.0, 1.0)
    theta_k = jnp.arccos(cos_k)
    # Log map at mean_n: u_k's direction within the tangent plane, with length = the angle.
    sin_k = jnp.sin(theta_k)
    scale_k = jnp.where(theta_k > 1e-12, theta_k / jnp.where(sin_k > 0, sin_k, 1.0), 0.0)
    gradient_n = jnp.mean((units_kn - cos_k[:, None] * mean_n[None, :]) * scale_k[:, None], axis=0)
    length = norm(gradient_n)
    done = done | (length < tol)
    # Exp map: walk the geodesic from mean_n along the gradient by its length.
    direction_n = gradient_n / jnp.where(length > 0, length, 1.0)
    moved_n = _normalised(jnp.cos(length) * mean_n + jnp.sin(length) * direction_n)
    return jnp.where(done, mean_n, moved_n), done, units_kn, tol


def karcher(base, sources_k, params, key=None, *, max_iter=10):
    """Riemannian (Karcher) mean of every input's direction with equal weights, starting from the
    normalised average of the unit vectors; iterates a gradient step in the tangent space until
    |gradient| < tol or `max_iter` steps; the result is scaled by the mean of the input norms.
    mergekit ignores the base here (it is one more input), so `base` must be None: stack it."""
    del base, key
    inputs_kn = sources_k.reshape(sources_k.shape[0], -1)
    norms_k = norm(inputs_kn, axis=1)
    units_kn = inputs_kn / jnp.where(norms_k > 0, norms_k, 1.0)[:, None]
    start_n = _normalised(jnp.mean(units_kn, axis=0))
    carry = (start_n, jnp.asarray(False), units_kn, jnp.asarray(params["tol"], inputs_kn.dtype))
    mean_n = jax.lax.fori_loop(0, int(max_iter), _karcher_step, carry)[0]
    return (mean_n * jnp.mean(norms_k)).reshape(sources_k.shape[1:])


def passthrough(base, sources_k, params, key=None):
    """The single input, times its `scale` (default 1). Frankenmerge slicing is config-level."""
    del base, key
    return sources_k[0] * jnp.asarray(params["scale"], sources_k.dtype)[0]
