"""Stack the layers of the DFS sources into one `Checkpoint` of model A's architecture with M
layers: A's embeddings, final norm and LM head (the paper takes the tokenizer and embeddings from
A), and layers [M, ...] = A's layers then B's (then any further source's), each keeping its own
sliding-window flag. The DFS passes index this stack by global layer id.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp

from ..checkpoint import Checkpoint
from ..errors import ConfigError
from .genome import PathSpec

# Fields that must agree for a layer of one source to run inside another's residual stream. The
# layer count and sliding flags may differ (they are per layer); embeddings come from A alone, so
# tying does not matter.
_SHARED_FIELDS = ("architecture", "hidden_size", "vocab_size", "intermediate_size", "num_heads",
                  "num_kv_heads", "head_dim", "rms_norm_eps", "rope", "hidden_act",
                  "layer_tensors", "norm_offset", "query_scale", "attn_softcap", "local_rope")


def source_name(ckpt: Checkpoint, index: int) -> str:
    return str(ckpt.source_dir) if ckpt.source_dir is not None else f"model{index}"


def check_compatible(ckpts: Sequence[Checkpoint], names: Sequence[str]) -> None:
    """Every mismatch between A and the other sources, reported at once (one line)."""
    if not ckpts:
        raise ConfigError("DFS needs at least one source model")
    if len(names) != len(ckpts):
        raise ConfigError(f"DFS needs one name per source model, got {len(names)} names for "
                          f"{len(ckpts)} models")
    a = ckpts[0].spec
    problems = []
    for name, ckpt in zip(names[1:], ckpts[1:]):
        other = ckpt.spec
        for field in _SHARED_FIELDS:
            if getattr(a, field) != getattr(other, field):
                problems.append(f"{field}: {names[0]} has {getattr(a, field)!r}, "
                                f"{name} has {getattr(other, field)!r}")
        # The export runs every layer under A's config, so A must carry B's window too.
        if (any(a.sliding_layers) or any(other.sliding_layers)) and (
                a.sliding_window != other.sliding_window):
            problems.append(f"sliding_window: {names[0]} has {a.sliding_window}, "
                            f"{name} has {other.sliding_window}")
    if problems:
        raise ConfigError("DFS sources must share one layer architecture: " + "; ".join(problems))


def stack_sources(ckpts: Sequence[Checkpoint], names: Sequence[str] | None = None) -> Checkpoint:
    """One Checkpoint with the sources' layers stacked [M, ...] in A's dtype (see module doc)."""
    names = list(names) if names is not None else [source_name(c, i) for i, c in enumerate(ckpts)]
    check_compatible(ckpts, names)
    a = ckpts[0]
    dtype = a.dtype
    layers = {short: jnp.concatenate([c.params["layers"][short].astype(dtype) for c in ckpts])
              for short in a.spec.layer_tensors}
    params = {k: v for k, v in a.params.items() if k != "layers"} | {"layers": layers}
    spec = a.spec.with_num_layers(tuple(f for c in ckpts for f in c.spec.sliding_layers))
    return Checkpoint(spec=spec, params=params, config=a.config, source_dir=a.source_dir)


def path_spec_for(ckpts: Sequence[Checkpoint], names: Sequence[str] | None = None,
                  **options) -> PathSpec:
    """The genome layout over these sources; `options` are PathSpec's (repeats, fix_ends, ...)."""
    names = list(names) if names is not None else [source_name(c, i) for i, c in enumerate(ckpts)]
    return PathSpec(source_names=tuple(names),
                    source_layers=tuple(c.spec.num_layers for c in ckpts), **options)
