"""Pure-JAX merge methods compatible with mergekit 0.1.5 (rules: docs/merge_semantics.md)."""

from evomerge_jax.merge.methods import (METHOD_NAMES, METHODS, REQUIRED, MergeMethod, get_method,
                                         merge_tensor)
from evomerge_jax.merge.sparsify import (RESCALE_RULES, SPARSIFIERS, magnitude_mask,
                                         magnitude_table, outlier_mask, sparsify)
from evomerge_jax.merge.task_arithmetic import PRESETS, TaskVectorPreset, task_vector_merge

__all__ = [
    "METHOD_NAMES",
    "METHODS",
    "PRESETS",
    "REQUIRED",
    "RESCALE_RULES",
    "SPARSIFIERS",
    "MergeMethod",
    "TaskVectorPreset",
    "get_method",
    "magnitude_mask",
    "magnitude_table",
    "merge_tensor",
    "outlier_mask",
    "sparsify",
    "task_vector_merge",
]
