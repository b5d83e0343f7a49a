"""The one registry of merge methods, and `merge_tensor`, the single entry point.

Each entry declares what mergekit 0.1.5 declares for the method (its parameters, their scope and
defaults, whether it takes a base model, how many models) so that configs written for mergekit
mean the same here. Parameters come in three kinds:

- per-source (`MergeMethod.per_source`): one value per stacked source, given as a scalar
  (broadcast) or a [K] array; may be traced.
- global (`MergeMethod.global_params`): one scalar; may be traced (booleans too).
- options (`MergeMethod.options`): keyword settings that change shapes or control flow
  (nuslerp's flattening, model_stock's filter_wise, karcher's max_iter, the rescale rule): static
  Python values that cannot be traced. One exception: the magnitude-trimming presets accept
  `magnitude_tables_kn`, the sources' precomputed `magnitude_table`s (an array, may be traced),
  so a caller can sort each source tensor once and reuse it across many merges.

A parameter without a default is `REQUIRED`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from evomerge_jax.errors import MergeError
from evomerge_jax.merge import data_weighted, interpolation
from evomerge_jax.merge.numerics import compute_dtype, concrete_or_none
from evomerge_jax.merge.task_arithmetic import PRESETS, preset_fn


class _Required:
    """Type of `REQUIRED`, the default of a parameter the user must give."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()
BASE_POLICIES = ("required", "optional", "none")


@dataclass(frozen=True, eq=False)  # identity equality keeps entries hashable (jit static args)
class MergeMethod:
    """A registry entry. `base`: "required", "optional", or "none" (mergekit's "ignored": a base
    model is an ordinary input, so stack it among the sources with its own parameters).
    `min_sources`/`max_sources` bound K, the number of stacked sources (None = unbounded)."""

    name: str
    fn: Callable[..., jax.Array]
    base: str
    per_source: Mapping[str, Any] = field(default_factory=dict)
    global_params: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    random: bool = False
    min_sources: int = 1
    max_sources: int | None = None

    def __post_init__(self):
        if self.base not in BASE_POLICIES:
            raise ValueError(f"{self.name}: base policy {self.base!r} not in {BASE_POLICIES}")
        for name in ("per_source", "global_params", "options"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))


def _task_vector_entry(name: str) -> MergeMethod:
    preset = PRESETS[name]
    per_source = {"weight": REQUIRED, "density": 1.0, "gamma": 0.01, "epsilon": 0.15}
    options = {"rescale_rule": "l1"}
    if preset.uses_tables:
        options["magnitude_tables_kn"] = None
    return MergeMethod(
        name, preset_fn(name), "required", per_source,
        {"normalize": preset.normalize, "rescale": preset.rescale, "lambda": 1.0, "int8_mask": False},
        options, random=preset.random, min_sources=0,
    )


_ENTRIES = [
    MergeMethod("linear", interpolation.linear, "none", {"weight": REQUIRED}, {"normalize": True}),
    MergeMethod("slerp", interpolation.slerp, "required", {}, {"t": REQUIRED}, max_sources=1),
    MergeMethod("nuslerp", interpolation.nuslerp, "optional", {"weight": REQUIRED}, {},
                {"nuslerp_flatten": True, "nuslerp_row_wise": False}, min_sources=2, max_sources=2),
    MergeMethod("multislerp", interpolation.multislerp, "optional", {"weight": REQUIRED},
                {"normalize_weights": True, "eps": 1e-8}),
    MergeMethod("karcher", interpolation.karcher, "none", {}, {"tol": 1e-5}, {"max_iter": 10}),
    *(_task_vector_entry(name) for name in PRESETS),
    MergeMethod("model_stock", data_weighted.model_stock, "required", {}, {},
                {"filter_wise": False}, min_sources=2),
    MergeMethod("sce", data_weighted.sce, "required", {}, {"select_topk": 1.0, "int8_mask": False},
                min_sources=0),
    MergeMethod("nearswap", data_weighted.nearswap, "required", {}, {"t": REQUIRED}, max_sources=1),
    MergeMethod("arcee_fusion", data_weighted.arcee_fusion, "required", max_sources=1),
    MergeMethod("ram", data_weighted.ram, "required", {}, {"epsilon": 1e-5}, min_sources=0),
    MergeMethod("ramplus_tl", data_weighted.ramplus_tl, "required", {},
                {"r": 0.1, "alpha": 0.2, "epsilon": 1e-5}, min_sources=0),
    MergeMethod("passthrough", interpolation.passthrough, "none", {"scale": 1.0}, max_sources=1),
]
METHODS: Mapping[str, MergeMethod] = MappingProxyType({entry.name: entry for entry in _ENTRIES})
METHOD_NAMES: tuple[str, ...] = tuple(METHODS)


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        choices = ", ".join(METHOD_NAMES)
        raise MergeError(f"unknown merge method {name!r}; choose one of {choices}") from None


def _check_arity(method: MergeMethod, base, num_sources: int) -> None:
    if method.base == "required" and base is None:
        raise MergeError(f"merge method {method.name!r} needs a base model (set base_model)")
    if method.base == "none" and base is not None:
        raise MergeError(f"merge method {method.name!r} takes no separate base: stack the base "
                         "model among the sources, with its own parameters")
    upper = method.max_sources
    if num_sources < method.min_sources or (upper is not None and num_sources > upper):
        wanted = f"exactly {upper}" if upper == method.min_sources else (
            f"at least {method.min_sources}" if upper is None else f"{method.min_sources} to {upper}")
        raise MergeError(f"merge method {method.name!r} takes {wanted} non-base model(s), "
                         f"got {num_sources}")


def _param_value(method: MergeMethod, name: str, value, default, shape: tuple[int, ...]):
    """A parameter as a numpy array when concrete, keeping a float's own precision (a Python float
    stays float64 so counts like int(d·n) match mergekit's), else the traced array; broadcast to
    `shape` ([K] or scalar), booleans as bool."""
    if value is REQUIRED:
        scope = "every source" if shape else "the merge"
        raise MergeError(f"merge method {method.name!r}: parameter {name!r} is required for {scope}")
    concrete = concrete_or_none(value)
    array = jnp.asarray(value) if concrete is None else concrete
    if array.shape not in ((), shape):
        raise MergeError(f"merge method {method.name!r}: parameter {name!r} has shape {array.shape}; "
                         f"expected a scalar{f' or {shape}' if shape else ''}")
    is_bool = isinstance(default, bool)
    if concrete is None:
        return jnp.broadcast_to(array != 0 if is_bool else array, shape)
    if is_bool:
        return np.broadcast_to(array.astype(bool), shape)
    floating = np.issubdtype(array.dtype, np.floating)
    return np.broadcast_to(array if floating else array.astype(np.float64), shape)


def merge_tensor(method_name: str, base, sources_k, params: Mapping[str, Any] | None = None,
                 key: jax.Array | None = None, **options) -> jax.Array:
    """Merge one tensor: `base` [...] or None, `sources_k` [K, ...] stacked non-base sources.

    params: per-source values (scalar or [K]) and global scalars, by mergekit name; missing ones
    take the registry default. Values may be traced, so `jax.vmap` over a population of parameter
    sets (a leading P axis on each value, base and sources shared) and `jax.jit` both work.
    key: a jax PRNG key, required by the random methods (dare_*, della*).
    options: static settings (see `MergeMethod.options`).
    Math runs in float32, or float64 when an input is float64; the result stays in that dtype and
    casting it back to the checkpoint dtype is the caller's job.
    """
    method = get_method(method_name)
    sources_k = jnp.asarray(sources_k)
    _check_arity(method, base, sources_k.shape[0])
    dtype = compute_dtype(base, sources_k)
    sources_k = sources_k.astype(dtype)
    if base is not None:
        base = jnp.asarray(base).astype(dtype)
        if base.shape != sources_k.shape[1:]:
            raise MergeError(f"merge method {method.name!r}: base shape {base.shape} differs from "
                             f"source shape {sources_k.shape[1:]}")
    params = dict(params or {})
    misplaced = sorted(set(params) & set(method.options))
    if misplaced:
        names = ", ".join(map(repr, misplaced))
        raise MergeError(f"merge method {method.name!r}: {names} is a static option; pass it as "
                         "a keyword argument of merge_tensor, not in params")
    unknown = sorted(set(params) - set(method.per_source) - set(method.global_params))
    unknown_options = sorted(set(options) - set(method.options))
    if unknown or unknown_options:
        known = sorted(method.per_source) + sorted(method.global_params) + sorted(method.options)
        names = ", ".join(map(repr, unknown + unknown_options))
        raise MergeError(f"merge method {method.name!r} has no parameter {names}; "
                         f"known: {', '.join(known)}")
    resolved = {}
    for scope, shape in ((method.per_source, (sources_k.shape[0],)), (method.global_params, ())):
        for name, default in scope.items():
            resolved[name] = _param_value(method, name, params.get(name, default), default, shape)
    if method.random and key is None:
        raise MergeError(f"merge method {method.name!r} is random: pass a jax PRNG key")
    if sources_k.shape[0] == 0:
        return base  # no non-base source for this tensor: the output is the base
    return method.fn(base, sources_k, resolved, key, **{**method.options, **options})
