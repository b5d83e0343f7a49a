"""Export a DFS path as an ordinary checkpoint of model A's architecture (docs/design.md §4).

RMSNorm is scale-invariant up to its epsilon: rms_norm(c·x) = sign(c)·rms_norm(x). Along a path
whose step k applies layer ℓ_k to s_k·h, write c_k = s_1·…·s_k (c_0 = 1) and g_k = h_k / c_k. Then
g_0 = h_0 is the embedding itself (the embeddings need no change), and step k reads
c_k·g_{k-1}: its norms see sign(c_k)·norm(g_{k-1}), and its two residual additions (o_proj and
down_proj outputs, biases included) land in a stream c_k times larger than g. So the plain decoder
whose k-th layer is ℓ_k with o_proj, o_bias, down_proj and down_bias divided by c_k and both norm
weights multiplied by sign(c_k) carries exactly g_k, and the final norm weight multiplied by
sign(c_n) gives the same logits. The one approximation: each norm's eps. The path normalises with
mean(c²g²) + eps, the plain model with mean(g²) + eps, i.e. the path equals the plain model with
eps/c_k² in place of eps in step k's norms; the per-norm relative difference is
|sqrt((m + eps/c²) / (m + eps)) - 1| <= eps·|1 - 1/c²| / (2m), m = mean(g²) at that norm.

Other families (docs/design.md §4.1): the rule of each tensor is `arch.fold_rule` (Gemma moves
"divide" from o_proj/down_proj to its post-norms, whose inputs are not scaled), applied to the
norm's effective weight `norm_offset + w` (Gemma's `1 + w`).

Slot and sliding flags: the k-th exported layer keeps the sliding-window flag of its source layer;
`checkpoint.save` writes num_hidden_layers and layer_types from the exported spec.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..arch import LAYER_TENSORS, fold_rule
from ..checkpoint import Checkpoint, save
from ..errors import ConfigError
from ..fileio import DEFAULT_SHARD_SIZE, atomic_dir
from .forward import path_arrays
from .genome import PathSpec, genome_for
from .path import LayerPath, decode_path
from .plot import plot_path


def _offset(spec, short: str) -> float:
    return spec.norm_offset if LAYER_TENSORS[short].norm else 0.0


def _fold(w, rule: str | None, c, offset: float):
    """A stored tensor folded by `rule` (arch.TensorInfo.fold): the effective weight
    `offset + w` is divided by c ("divide") or multiplied by sign(c) ("sign"), and stored back
    less the offset (Gemma's norms are stored as `weight - 1`)."""
    if rule == "divide":
        return (offset + w) / c - offset
    if rule == "sign":
        return (offset + w) * np.sign(c) - offset
    return w


def fold_path(stack: Checkpoint, path: LayerPath) -> Checkpoint:
    """The plain checkpoint equal to `path` over `stack` (A's architecture, n = path length
    layers, A's embeddings and head). Folding runs in float64 and casts back to the stack dtype."""
    path_arrays(path, stack.spec)  # checks that the path belongs to this stack
    c_n = path.cumulative_scales()
    if np.any(c_n == 0):
        raise ConfigError(f"DFS path cannot be exported: step {int(np.argmax(c_n == 0))} has a "
                          "zero cumulative scale (a scale of 0 erases the hidden state)")
    ids = np.asarray(path.layers)
    dtype = stack.dtype
    layers = {}
    spec = stack.spec
    for short, stacked in stack.params["layers"].items():
        w = np.asarray(stacked)[ids].astype(np.float64)       # [n, ...], gathered on the host
        per_step = c_n.reshape((-1,) + (1,) * (w.ndim - 1))
        layers[short] = jnp.asarray(_fold(w, fold_rule(spec, short), per_step,
                                          _offset(spec, short)).astype(np.float32), dtype)
    params = {k: v for k, v in stack.params.items() if k != "layers"}
    final = np.asarray(stack.params["final_norm"]).astype(np.float64)
    params["final_norm"] = jnp.asarray(_fold(final, "sign", c_n[-1], spec.norm_offset).astype(
        np.float32), dtype)
    params["layers"] = layers
    spec = stack.spec.with_num_layers(tuple(stack.spec.sliding_layers[i] for i in ids))
    return Checkpoint(spec=spec, params=params, config=stack.config, source_dir=stack.source_dir)


def save_path_model(stack: Checkpoint, path: LayerPath, out_dir: str | Path, *,
                    overwrite: bool = False, shard_size: int | str = DEFAULT_SHARD_SIZE,
                    tokenizer_from: str | Path | None = None) -> Path:
    """Write the exported path as an HF dir (A's tokenizer files by default) with `path.json` (the
    steps: slot, layer, source, scale, cumulative scale) and `path.png`, atomically."""
    ckpt = fold_path(stack, path)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        # `save` writes text extras only and renames its own dir into place: let it build inside
        # our temp dir, then lift its files up beside the picture, so that the target appears
        # complete or not at all.
        inner = save(ckpt, tmp / "model", shard_size=shard_size, tokenizer_from=tokenizer_from,
                     extra_files={"path.json": path.to_json()})
        for item in inner.iterdir():
            os.replace(item, tmp / item.name)
        inner.rmdir()
        plot_path(path, tmp / "path.png")
    return Path(out_dir)


def known_path_target(stack: Checkpoint, path_spec: PathSpec, used_slots, w_mm=None,
                      entry_scale: float | None = None) -> tuple[jax.Array, LayerPath, Checkpoint]:
    """A target model that is a known path over the sources, for the known-optimum evolution
    test: (a genome that decodes to it, the path, the exported plain checkpoint). The fixed start
    and end are added to `used_slots`; `w_mm` [M, M] defaults to all ones."""
    genome = genome_for(path_spec, used_slots, w_mm, entry_scale)
    path = decode_path(path_spec, genome)
    return genome, path, fold_path(stack, path)
