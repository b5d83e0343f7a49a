"""Methods whose mixing weights are computed from the tensors themselves (docs/merge_semantics.md
§4): model_stock, sce, nearswap, arcee_fusion, ram, ramplus_tl.

Every function takes (base, sources_k [K, ...], params, key=None, **options) and returns [...];
all need the base model B. δ_k = X_k − B.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evomerge_jax.merge.numerics import as_rows, norm, sign_agreement
from evomerge_jax.merge.sparsify import sorted_value_at


def model_stock(base, sources_k, params, key=None, *, filter_wise=False):
    """Model Stock (Jang et al. 2024, arXiv:2403.19522, Eq. 6): c = mean pairwise cosine of the
    offsets (per row with `filter_wise`), t = N·c / (1 + (N − 1)·c),
    out = t·mean(X) + (1 − t)·B; B itself where |1 + (N − 1)·c| < 1e-6."""
    del params, key
    num_sources = sources_k.shape[0]
    offsets_k = sources_k - base[None]
    if filter_wise:
        vectors_kr = jax.vmap(as_rows)(offsets_k)  # [K, R, C]: one cosine per row
    else:
        vectors_kr = offsets_k.reshape(num_sources, 1, -1)  # [K, 1, N]: the whole tensor
    norms_kr = norm(vectors_kr, axis=-1)
    cosines = []
    for i in range(num_sources):
        for j in range(i + 1, num_sources):
            dot_r = jnp.sum(vectors_kr[i] * vectors_kr[j], axis=-1)
            cosines.append(dot_r / jnp.maximum(norms_kr[i] * norms_kr[j], 1e-8))
    cos_r = jnp.mean(jnp.stack(cosines), axis=0)
    denominator_r = 1 + (num_sources - 1) * cos_r
    degenerate_r = jnp.abs(denominator_r) < 1e-6
    safe_r = jnp.where(degenerate_r, 1.0, denominator_r)
    ratio_r = jnp.where(degenerate_r, 0.0, num_sources * cos_r / safe_r)
    # [R] -> broadcast over each row's elements (R = 1 when not filter-wise).
    if filter_wise and base.ndim > 1:
        ratio = ratio_r.reshape((-1,) + (1,) * (base.ndim - 1))
    else:
        ratio = ratio_r[0]  # one ratio for the whole tensor (a 1-D tensor is a single row)
    return ratio * jnp.mean(sources_k, axis=0) + (1 - ratio) * base


def sce(base, sources_k, params, key=None):
    """SCE (FuseChat, Wan et al. 2024, arXiv:2408.07990, §3.3): Select the top `select_topk`
    fraction of positions by variance across models, Calculate per-model weights from mean
    squared task vectors, Erase minority-sign elements (TIES sign election on the unweighted T)."""
    del key
    task_k = sources_k - base[None]
    num_sources = task_k.shape[0]
    select = jnp.asarray(params["select_topk"], task_k.dtype)
    variance = jnp.var(task_k, axis=0)  # population variance across models
    table_n = jnp.sort(variance.ravel())[::-1]
    # mergekit counts in float32 (a tensor count times a float), as does this.
    count = jnp.floor(jnp.sum(variance != 0).astype(task_k.dtype) * select).astype(jnp.int32)
    selected = (variance >= sorted_value_at(table_n, count - 1)) & (count > 0)
    task_k = jnp.where((select < 1) & ~selected[None], 0.0, task_k)
    energy_k = jnp.mean((task_k * task_k).reshape(num_sources, -1), axis=1)
    total = jnp.sum(energy_k)
    uniform = total < 1e-6
    share_k = jnp.where(uniform, 1.0 / num_sources, energy_k / jnp.where(uniform, 1.0, total))
    share_k = share_k.reshape((-1,) + (1,) * base.ndim)
    agree_k = sign_agreement(task_k)
    numerator = jnp.sum(jnp.where(agree_k, share_k * task_k, 0.0), axis=0)
    divisor = jnp.sum(jnp.where(agree_k, share_k, 0.0), axis=0)
    return base + numerator / jnp.maximum(divisor, 1e-6)


def nearswap(base, sources_k, params, key=None):
    """NearSwap: take the other model's value where it is within t of the base, blend elsewhere:
    w = clip(t / max(|B − X|, 1e-6), 0, 1), out = w·X + (1 − w)·B."""
    del key
    other = sources_k[0]
    t = jnp.asarray(params["t"], base.dtype)
    weight = jnp.clip(t / jnp.maximum(jnp.abs(base - other), 1e-6), 0.0, 1.0)
    return weight * other + (1 - weight) * base


def _quantile_at_floor(sorted_n, q: float):
    """The q-quantile as sorted[floor(q·(n − 1))] (no interpolation)."""
    return sorted_n[int(q * (sorted_n.shape[0] - 1))]


def _last_axis_rows(x):
    return x.reshape(1, -1) if x.ndim <= 1 else x.reshape(-1, x.shape[-1])


def _kl_of_softmaxes(x_rc, a_rc, d_rc):
    """KL(softmax(x) ‖ softmax(a)) per row [R, 1], with d = x − a, as Σ p·d − log Σ q·e^d
    (the same quantity as Σ p·(log p − log q), written so that float32 keeps its digits: two
    close log-softmaxes of magnitude log C cancel; measured 1e-5 relative to float64 against 6e-4,
    which flipped an element at the threshold against mergekit's on a Gemma 3 v_proj)."""
    p, q = jax.nn.softmax(x_rc, axis=-1), jax.nn.softmax(a_rc, axis=-1)
    return (jnp.sum(p * d_rc, axis=-1, keepdims=True)
            - jnp.log1p(jnp.sum(q * jnp.expm1(d_rc), axis=-1, keepdims=True)))


def arcee_fusion(base, sources_k, params, key=None):
    """Arcee Fusion: importance = |X − A| · KL(softmax(X) ‖ softmax(A)) per row of the last axis
    (+1e-8); keep the change X − A only where importance >= median + 1.5·IQR of all importances.
    Rows are along the last axis whatever the rank: a Mixtral expert tensor [U, 2F, D] has U·2F
    rows of D (mergekit 0.1.5, black-box: its kept elements match this exactly, not U rows)."""
    del params, key
    other = sources_k[0]
    change = other - base
    rows_d = _last_axis_rows(change)
    kl_r = _kl_of_softmaxes(_last_axis_rows(other), _last_axis_rows(base), rows_d)
    importance = (jnp.abs(rows_d) * kl_r + 1e-8).reshape(change.shape)
    sorted_n = jnp.sort(importance.ravel())
    q1, median, q3 = (_quantile_at_floor(sorted_n, q) for q in (0.25, 0.5, 0.75))
    threshold = median + 1.5 * (q3 - q1)
    return base + jnp.where(importance >= threshold, change, 0.0)


def _change_sets(base, sources_k, epsilon):
    """δ_k, the changed-element masks |δ_k| > ε, and how many models changed each element."""
    delta_k = sources_k - base[None]
    changed_k = jnp.abs(delta_k) > jnp.asarray(epsilon, delta_k.dtype)
    return delta_k, changed_k, jnp.sum(changed_k, axis=0)


def ram(base, sources_k, params, key=None):
    """RAM: an element changed by one model keeps that change; one changed by several gets the
    mean of their changes; changes of at most ε are ignored."""
    del key
    delta_k, changed_k, count = _change_sets(base, sources_k, params["epsilon"])
    total = jnp.sum(jnp.where(changed_k, delta_k, 0.0), axis=0)
    return base + jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def ramplus_tl(base, sources_k, params, key=None):
    """RAM+ (tensor-level): as RAM, but model k's unique changes are scaled by
    1 + r·clip(shared_k / unique_k, 0, α), where unique_k / shared_k count the elements k changed
    alone / together with another model."""
    del key
    delta_k, changed_k, count = _change_sets(base, sources_k, params["epsilon"])
    dtype = delta_k.dtype
    unique_k = changed_k & (count == 1)[None]
    shared_k = changed_k & (count > 1)[None]
    num_sources = delta_k.shape[0]
    unique_n = jnp.sum(unique_k.reshape(num_sources, -1), axis=1).astype(dtype)
    shared_n = jnp.sum(shared_k.reshape(num_sources, -1), axis=1).astype(dtype)
    ratio_k = jnp.clip(shared_n / jnp.maximum(unique_n, 1.0), 0.0, jnp.asarray(params["alpha"], dtype))
    factor_k = (1 + jnp.asarray(params["r"], dtype) * ratio_k).reshape((-1,) + (1,) * base.ndim)
    unique_part = jnp.sum(jnp.where(unique_k, delta_k * factor_k, 0.0), axis=0)
    shared_total = jnp.sum(jnp.where(shared_k, delta_k, 0.0), axis=0)
    return base + unique_part + jnp.where(count > 1, shared_total / jnp.maximum(count, 1), 0.0)
