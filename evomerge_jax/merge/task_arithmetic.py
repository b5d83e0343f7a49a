"""The task-vector family: one function with pluggable sparsify and consensus steps, and presets.

Implements steps 1–6 of docs/merge_semantics.md §2:
task arithmetic (Ilharco et al. 2023, arXiv:2212.04089), TIES (Yadav et al. 2023,
arXiv:2306.01708), DARE (Yu et al. 2023, arXiv:2311.03099), Model Breadcrumbs (Davari &
Belilovsky 2023, arXiv:2312.06795) and DELLA (Deep et al. 2024, arXiv:2406.11617) differ only in
which sparsifier and which sign consensus they plug in, and in their normalize/rescale defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp

from evomerge_jax.merge.numerics import per_source, sign_agreement
from evomerge_jax.merge.sparsify import SPARSIFIERS, magnitude_table, sparsify

# A scalar divisor closer to zero than this is replaced by 1 (step 5, no consensus).
DIVISOR_FLOOR = 1e-8


@dataclass(frozen=True)
class TaskVectorPreset:
    """One row of the task-vector table (docs/merge_semantics.md §2)."""

    consensus: str | None  # "sum" or None
    sparsifier: str | None  # a name from sparsify.SPARSIFIERS or None
    normalize: bool  # default of the global `normalize` parameter
    rescale: bool  # default of the global `rescale` parameter

    @property
    def random(self) -> bool:
        return self.sparsifier is not None and SPARSIFIERS[self.sparsifier].random

    @property
    def uses_tables(self) -> bool:
        return self.sparsifier is not None and SPARSIFIERS[self.sparsifier].uses_table

    @property
    def sparsifier_reads(self) -> tuple[str, ...]:
        return () if self.sparsifier is None else SPARSIFIERS[self.sparsifier].reads


PRESETS = {
    "task_arithmetic": TaskVectorPreset(None, None, normalize=False, rescale=False),
    "ties": TaskVectorPreset("sum", "magnitude", normalize=True, rescale=False),
    "dare_ties": TaskVectorPreset("sum", "random", normalize=False, rescale=True),
    "dare_linear": TaskVectorPreset(None, "random", normalize=False, rescale=True),
    "breadcrumbs": TaskVectorPreset(None, "magnitude_outliers", normalize=False, rescale=False),
    "breadcrumbs_ties": TaskVectorPreset("sum", "magnitude_outliers", normalize=False, rescale=False),
    "della": TaskVectorPreset("sum", "della_magprune", normalize=True, rescale=True),
    "della_linear": TaskVectorPreset(None, "della_magprune", normalize=False, rescale=True),
}


def task_vector_merge(base, sources_k, params, key=None, *, consensus=None, sparsifier=None,
                      rescale_rule="l1", magnitude_tables_kn=None):
    """B + λ · combine(sparsify(X_k − B)) for one tensor.

    base: [...]; sources_k: [K, ...]; params: per-source `weight`, `density`, `gamma`, `epsilon`
    ([K] each), global `normalize`, `rescale`, `lambda` (scalars, may be traced).
    consensus: None or "sum"; sparsifier: None or a name from `sparsify.SPARSIFIERS`;
    rescale_rule: "l1" (mergekit) or "inverse_density" (1/d, the DARE paper).
    magnitude_tables_kn: optional precomputed `magnitude_table` of each source's task vector [K, N],
    for callers that merge the same sources many times outside one jit.
    """
    num_sources = sources_k.shape[0]
    # Step 1: task vectors.
    delta_k = sources_k - base[None]
    # Step 2: each task vector sparsified on its own. A Python loop over the (few) sources keeps a
    # concrete density concrete, so int(d·n) is counted in float64 as mergekit does.
    if sparsifier is not None:
        if magnitude_tables_kn is None and SPARSIFIERS[sparsifier].uses_table:
            magnitude_tables_kn = jax.vmap(magnitude_table)(delta_k)
        keys_k = jax.random.split(key, num_sources) if SPARSIFIERS[sparsifier].random else None
        delta_k = jnp.stack([
            sparsify(
                delta_k[k], params["density"][k], sparsifier,
                key=None if keys_k is None else keys_k[k],
                table=None if magnitude_tables_kn is None else magnitude_tables_kn[k],
                gamma=params["gamma"][k], epsilon=params["epsilon"][k],
                rescale_on=params["rescale"], rescale_rule=rescale_rule,
            )
            for k in range(num_sources)
        ])
    # Step 3: weights apply before the sign election, so a negative weight flips votes.
    weight_k = per_source(params["weight"], base.ndim, delta_k.dtype)
    weighted_k = weight_k * delta_k
    # Steps 4-5: sum over the agreeing sources, and the matching per-element divisor.
    if consensus == "sum":
        agree_k = sign_agreement(weighted_k)
        merged = jnp.sum(jnp.where(agree_k, weighted_k, 0.0), axis=0)
        divisor = jnp.sum(jnp.where(agree_k, weight_k, 0.0), axis=0)
        divisor = jnp.where(divisor == 0, 1.0, divisor)
    elif consensus is None:
        merged = jnp.sum(weighted_k, axis=0)
        divisor = jnp.sum(weight_k)
        divisor = jnp.where(jnp.abs(divisor) < DIVISOR_FLOOR, 1.0, divisor)
    else:
        raise ValueError(f"unknown consensus {consensus!r}; use 'sum' or None")
    # Step 6: optional normalisation, then the global scale λ.
    merged = jnp.where(params["normalize"], merged / divisor, merged)
    return base + jnp.asarray(params["lambda"], merged.dtype) * merged


def preset_fn(name: str):
    """The merge function of a named preset: `task_vector_merge` with its steps plugged in."""
    preset = PRESETS[name]
    return partial(task_vector_merge, consensus=preset.consensus, sparsifier=preset.sparsifier)
