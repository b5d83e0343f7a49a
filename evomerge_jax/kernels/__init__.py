"""Fused population-merge kernels (Pallas) beside their pure-jnp references (docs/design.md §2.4).

`population_merge` merges one tensor for P candidates over K sources tile by tile; `choose_backend`
resolves `compute.kernels` (auto: Pallas on GPU/TPU, jnp on CPU, where XLA's own fusion wins and
Pallas would only run interpreted).
"""

from __future__ import annotations

import jax

from ..errors import ConfigError
from ..merge.task_arithmetic import PRESETS
from .population import BACKENDS, KERNEL_METHODS, population_merge

KERNEL_SETTINGS = ("auto", "pallas", "jnp")


def choose_backend(setting: str, platform: str | None = None) -> tuple[str, bool]:
    """(backend, interpret) for a `compute.kernels` setting on `platform` (default: jax's)."""
    platform = platform or jax.default_backend()
    compiled = platform in ("gpu", "cuda", "rocm", "tpu")
    if setting == "auto":
        return ("pallas", False) if compiled else ("jnp", False)
    if setting == "pallas":
        return "pallas", not compiled  # interpret mode where Pallas cannot compile (CPU)
    return "jnp", False


def kernel_fields(setting: str, method: str, prng: str) -> dict:
    """PSModel's `kernels` and `interpret` for a run's `compute.kernels`, merge method and
    `compute.prng`. The kernels draw random masks with the hash generator only: auto falls back
    to jnp under threefry, an explicit `pallas` is a config error."""
    backend, interpret = choose_backend(setting)
    if backend == "pallas" and prng != "hash" and method in PRESETS and PRESETS[method].random:
        if setting == "pallas":
            raise ConfigError(f"compute.kernels: pallas draws {method}'s masks with the hash "
                              f"generator; compute.prng is {prng!r} (use kernels: jnp or auto)")
        backend = "jnp"
    return {"kernels": backend, "interpret": interpret}


__all__ = ["BACKENDS", "KERNEL_METHODS", "KERNEL_SETTINGS", "choose_backend", "kernel_fields",
           "population_merge"]
