"""`population_merge`: one tensor merged for P candidates over K sources, by the fused Pallas
kernel or its pure-jnp reference (docs/design.md §2.4).

    population_merge(method, base [...], sources_k [K, ...], params, keys_p2 [P, 2],
                     backend="pallas" | "jnp") -> [P, ...] in out_dtype

Methods: the task-vector family (task_arithmetic, ties, dare_ties, dare_linear, breadcrumbs,
breadcrumbs_ties, della, della_linear). params as for `merge_tensor`, each value a scalar, [K] or
[P, K] (per-source) and a scalar or [P] (global). Random masks use the hash generator
(parallel/prng.py) and equal `merge_tensor`'s given the same keys: `wrap_key(key_data)` turns a
candidate's raw key into this tensor's typed key (default: the generator's key itself).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import MergeError
from ..merge.numerics import compute_dtype, concrete_or_none
from ..merge.task_arithmetic import PRESETS
from ..parallel.prng import wrap
from . import prepass
from .layout import ScalarLayout
from .pallas_merge import DEFAULT_TILE, kept_l1_call, merge_call
from .reference import reference_kept_l1, reference_merge
from .tile import MergeSteps

KERNEL_METHODS = tuple(PRESETS)
BACKENDS = ("pallas", "jnp")


def _rescale_may_be_on(value) -> bool:
    concrete = concrete_or_none(value)
    return concrete is None or bool(np.any(concrete))


def population_merge(method: str, base, sources_k, params: dict, keys_p2, *, backend="pallas",
                     prng: str = "hash", rescale_rule: str = "l1", out_dtype=None,
                     table_kn=None, wrap_key=None, tile=DEFAULT_TILE, interpret: bool = False):
    """[P, ...]: each candidate's merge of one tensor (see the module docstring)."""
    if method not in PRESETS:
        raise MergeError(f"the fused merge kernels implement {', '.join(KERNEL_METHODS)}; "
                         f"got {method!r}")
    if backend not in BACKENDS:
        raise MergeError(f"unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    preset = PRESETS[method]
    steps = MergeSteps(preset.consensus, preset.sparsifier, rescale_rule)
    dtype = compute_dtype(base, sources_k)
    base, sources_k = jnp.asarray(base).astype(dtype), jnp.asarray(sources_k).astype(dtype)
    out_dtype = dtype if out_dtype is None else jnp.dtype(out_dtype)
    shape, (k, p) = base.shape, (sources_k.shape[0], keys_p2.shape[0])
    values = prepass.resolve_params(method, params, p, k)
    base_rc = prepass.rows_of(base)
    sources_krc = jax.vmap(prepass.rows_of)(sources_k)
    delta_kn = (sources_k - base[None]).reshape(k, -1)
    floats = {name: values[name] for name in ("weight", "density", "epsilon", "lambda",
                                              "normalize", "rescale")}
    floats["l1"] = jnp.ones((p, k), dtype)
    words, relative_krc = {}, None
    sparsifier = preset.sparsifier
    if sparsifier == "magnitude":
        floats["hi"], words["cutoff"] = prepass.magnitude_cutoffs(delta_kn, values["density"])
    elif sparsifier == "magnitude_outliers":
        floats["hi"], floats["lo"], floats["active"] = prepass.outlier_bands(
            delta_kn, values["density"], values["gamma"], table_kn)
    elif sparsifier == "della_magprune":
        prepass.check_della_population(values["density"], values["epsilon"])
        relative_krc = prepass.della_relative_ranks(sources_krc - base_rc[None])
    if preset.random:
        if prng != "hash":
            raise MergeError(f"the fused merge kernels draw {method}'s masks with the hash "
                             f"generator; compute.prng is {prng!r}: use compute.kernels: jnp")
        keys = prepass.source_keys(keys_p2, k, wrap_key or (lambda data: wrap(data, prng)))
        words["key0"], words["key1"] = keys[..., 0], keys[..., 1]
    layout = ScalarLayout(k)
    floats_pf, words_pu = layout.pack(floats, words, p, dtype)
    arrays = (base_rc, sources_krc, relative_krc)
    if sparsifier is not None and rescale_rule == "l1" and _rescale_may_be_on(values["rescale"]):
        if backend == "pallas":
            kept = kept_l1_call(steps, *arrays, floats_pf, words_pu, tile, interpret)
        else:
            kept = reference_kept_l1(steps, *arrays, floats_pf, words_pu)
        floats["l1"] = prepass.l1_factors(jnp.sum(jnp.abs(delta_kn), axis=-1), kept)
        floats_pf, words_pu = layout.pack(floats, words, p, dtype)
    if backend == "pallas":
        merged = merge_call(steps, *arrays, floats_pf, words_pu, out_dtype, tile, interpret)
    else:
        merged = reference_merge(steps, *arrays, floats_pf, words_pu, out_dtype)
    return merged.reshape((p, *shape))
