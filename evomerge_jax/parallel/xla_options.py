"""`jit` with the XLA options the merge passes need on CPU.

XLA:CPU in jaxlib 0.10 hands reductions to YNNPACK. A reduction over the leading axis fused with
its elementwise producers, which is what the merge library's sum over the stacked sources
(`jnp.sum(w_k * delta_k, axis=0)`) compiles to, then runs about 1000x slower than it should: 8 s
instead of 6 ms for a [2, 8000, 512] stack on this machine, and superlinearly worse for an
embedding matrix. Keeping YNNPACK to matrix products avoids it; row reductions (norms, softmax)
get slower, by far less than the merges gain. Other platforms compile with their defaults.
"""

from __future__ import annotations

import functools

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def merge_jit(fn, **jit_kwargs):
    """`jax.jit(fn, **jit_kwargs)`, compiled with `CPU_OPTIONS` when the default backend is the
    CPU (decided at the first call, so that importing this module initialises no backend)."""

    @functools.cache
    def compiled(platform: str):
        options = CPU_OPTIONS if platform == "cpu" else None
        return jax.jit(fn, compiler_options=options, **jit_kwargs)

    @functools.wraps(fn)
    def call(*args, **kwargs):
        return compiled(jax.default_backend())(*args, **kwargs)

    call.lower = lambda *a, **k: compiled(jax.default_backend()).lower(*a, **k)
    return call
