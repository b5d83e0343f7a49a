"""Which merge methods a PS genome can hold, and what of each it can evolve: read from the merge
method registry (`merge/methods.py`), so that a genome's parameters are exactly mergekit's.

A method's numeric per-source parameters (weight, density, ...) are evolvable per group and
source, its numeric global ones (slerp's t, sce's select_topk, lambda) per group; its boolean
parameters are switches that `merge.parameters` may fix; numerical safeguards (multislerp's eps,
karcher's tol) stay fixed. The task-vector presets evolve only what their sparsifier reads (so
evolving `density` under task_arithmetic is an error). model_stock and karcher have no numeric
parameter in mergekit 0.1.5, so a genome cannot hold them: the config says so.
"""

from __future__ import annotations

from ..merge.methods import METHODS
from ..merge.task_arithmetic import PRESETS

# Methods a PS genome may use: the task-vector presets and the interpolations and data-weighted
# methods that merge the same tensors of every source (no layer swapping, no per-call data).
GENOME_METHODS = (*PRESETS, "linear", "slerp", "nuslerp", "multislerp", "karcher", "model_stock",
                  "sce")
_SAFEGUARDS = {"eps", "tol"}


def method_parameters(method: str) -> dict[str, str]:
    """Evolvable parameters of a genome method -> "per_source" or "global"."""
    if method in PRESETS:
        used = {"weight": "per_source", "lambda": "global"}
        return {**used, **{name: "per_source" for name in PRESETS[method].sparsifier_reads}}
    entry = METHODS[method]
    out = {n: "per_source" for n, d in entry.per_source.items() if not isinstance(d, bool)}
    out.update({n: "global" for n, d in entry.global_params.items()
                if not isinstance(d, bool) and n not in _SAFEGUARDS})
    return out


def switches(method: str) -> tuple[str, ...]:
    """The boolean parameters `merge.parameters` may fix (never evolved)."""
    entry = METHODS[method]
    return tuple(n for n, d in {**entry.per_source, **entry.global_params}.items()
                 if isinstance(d, bool))


def fixed_only(method: str) -> tuple[str, ...]:
    """Numeric parameters that may be fixed but not evolved (numerical safeguards)."""
    return tuple(n for n, d in METHODS[method].global_params.items()
                 if n in _SAFEGUARDS and not isinstance(d, bool))


def uses_tables(method: str) -> bool:
    return method in PRESETS and PRESETS[method].uses_tables


def takes_base(method: str) -> bool:
    """Whether the merge reads the base (mergekit's "ignored" base: linear, karcher do not)."""
    return METHODS[method].base != "none"


def source_count_error(method: str, count: int) -> str | None:
    entry = METHODS[method]
    low, high = entry.min_sources, entry.max_sources
    if count < low or (high is not None and count > high):
        wanted = f"exactly {high}" if high == low else (
            f"at least {low}" if high is None else f"{low} to {high}")
        return f"merge method {method!r} takes {wanted} model(s) besides the base, got {count}"
    return None
