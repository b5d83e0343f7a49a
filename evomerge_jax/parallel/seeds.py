"""Every stream of randomness derived from a run's seed, in one place.

A seed feeds several independent consumers; each folds in its own tag first, so that no two share
bits. Per-tensor keys fold in a stable id of the tensor's short name (and, inside the layer scan,
its layer index), so a tensor's randomness does not depend on the architecture's tensor order, the
process or the chunking: a candidate's DARE/DELLA masks are the same in the population pass and at
export, and `evomerge merge` draws each tensor independently of the others.
"""

from __future__ import annotations

import zlib

import jax
import numpy as np

from .prng import wrap

MERGE_STREAM = 1     # candidates' merge masks (DARE, DELLA)
STRATEGY_STREAM = 2  # the evosax strategy's own key
DFS_MLP_STREAM = 3   # the initial weights of the DFS scale MLP (dfs.scale_mode: mlp)


def tensor_id(name: str) -> int:
    """A stable 31-bit id of a tensor's short name (independent of the architecture's order)."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def candidate_key(seed: int, generation: int, candidate: int) -> np.ndarray:
    """Raw key data [2] (uint32) of one candidate's merge randomness."""
    key = jax.random.fold_in(jax.random.key(seed), MERGE_STREAM)
    key = jax.random.fold_in(jax.random.fold_in(key, generation), candidate)
    return np.asarray(jax.random.key_data(key))


def candidate_keys(seed: int, generation: int, candidates) -> np.ndarray:
    return np.stack([candidate_key(seed, generation, int(c)) for c in candidates])


def tensor_key(key_data, name: str, layer=None, prng: str = "hash"):
    """The key of one tensor of one candidate, for the generator `prng` (prng.py); `layer` may be
    traced (inside the layer scan)."""
    key = jax.random.fold_in(wrap(key_data, prng), tensor_id(name))
    return key if layer is None else jax.random.fold_in(key, layer)


def merge_tensor_key(seed: int, name: str) -> jax.Array:
    """`evomerge merge`'s key of one output tensor (full HF name): independent of the process and
    of the other tensors."""
    return jax.random.fold_in(jax.random.key(seed), tensor_id(name))
