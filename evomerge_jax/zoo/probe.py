"""The zoo's gate measurements: greedy exact match by teacher forcing, and probe merges.

Exact match (docs/design.md §1): greedy decoding reproduces the target exactly when, with the target
fed in, the argmax at every target position, the end token included, is the next target token. One
forward pass per batch replaces a decode loop.

Probe merges are plain task arithmetic and TIES over the whole model with two global weights, run
through the engine's `merge_tensor`; the evolutionary search explores far more (per-layer weights,
densities, DFS), so the grid is a floor on what the search can reach, not a ceiling.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..arch import ModelSpec
from ..merge.methods import merge_tensor
from ..model import forward
from .data import Item, encode_items

EVAL_LEN = 32


@partial(jax.jit, static_argnames=("spec",))
def _item_correct(params, spec: ModelSpec, tokens_bs, scored_bs):
    logits = forward(params, spec, tokens_bs, (tokens_bs != 0).astype(jnp.int32))
    hits = jnp.argmax(logits[:, :-1], axis=-1) == tokens_bs[:, 1:]
    scored = scored_bs[:, 1:] > 0
    return jnp.all(hits | ~scored, axis=-1)


def item_correct(params: dict, spec: ModelSpec, items: list[Item], batch: int = 128) -> np.ndarray:
    """[n] bool: whether greedy decoding reproduces each target (and the end token) exactly."""
    tokens, scored = encode_items(items, EVAL_LEN)
    # pad to whole batches of all-padding rows, so that one compiled shape serves every task
    n = len(items)
    pad = -n % batch
    tokens = np.concatenate([tokens, np.zeros((pad, EVAL_LEN), tokens.dtype)])
    scored = np.concatenate([scored, np.zeros((pad, EVAL_LEN), scored.dtype)])
    return np.concatenate([np.asarray(_item_correct(params, spec, jnp.asarray(tokens[i:i + batch]),
                                                    jnp.asarray(scored[i:i + batch])))
                           for i in range(0, n + pad, batch)])[:n]


def exact_match(params: dict, spec: ModelSpec, items: list[Item]) -> float:
    """Fraction of items whose target (and end token) greedy decoding reproduces exactly."""
    return float(item_correct(params, spec, items).mean())


def scale_task_vector(base: dict, tuned: dict, alpha: float) -> dict:
    """base + alpha * (tuned - base), leaf by leaf: the linearity gate's model."""
    return jax.tree.map(lambda b, t: b + alpha * (t - b), base, tuned)


def merge_models(method: str, base: dict, sources: list[dict], weights, density: float = 1.0,
                 key: jax.Array | None = None) -> dict:
    """One merge of whole models with the engine's merge methods (one weight per source)."""
    params = {"weight": jnp.asarray(weights, jnp.float32)}
    if method != "task_arithmetic":
        params["density"] = density

    def one(b, srcs, k):
        return merge_tensor(method, b, srcs, params, k)

    out = {}
    for n, name in enumerate(sorted(k for k in base if k != "layers")):
        k = None if key is None else jax.random.fold_in(key, n)
        out[name] = one(base[name], jnp.stack([s[name] for s in sources]), k)
    out["layers"] = {}
    for n, name in enumerate(sorted(base["layers"])):
        b = base["layers"][name]
        srcs = jnp.stack([s["layers"][name] for s in sources], axis=1)  # [L, K, ...]
        # layer by layer, as mergekit sees the tensors (TIES trims each tensor on its own)
        out["layers"][name] = jnp.stack([
            one(b[l], srcs[l], None if key is None else jax.random.fold_in(key, 1000 * (n + 1) + l))
            for l in range(b.shape[0])])
    return out
