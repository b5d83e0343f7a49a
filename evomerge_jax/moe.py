"""Mixtral's sparse MLP as a pure function: a router picks each token's top-k experts, their
outputs are summed with the renormalised router probabilities (transformers' MixtralSparseMoeBlock:
softmax in float32, top-k, divide by the top-k sum).

Every expert runs on every token and the unrouted ones get weight 0: one dense einsum over the
expert axis, the same program for every candidate of a population pass and shardable by expert
over a mesh's model axis (arch.py), at U / k times the MLP flops of a gather of the routed
experts. Shape letters (docs/design.md §7): U experts, F the intermediate size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .arch import ModelSpec


def routing_weights(router_ud: jax.Array, x_bsd: jax.Array, top_k: int) -> jax.Array:
    """Per token and expert [B, S, U] float32: the renormalised probability of each of the top-k
    experts, 0 for the others."""
    logits = jnp.einsum("bsd,ud->bsu", x_bsd, router_ud)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    top, index = jax.lax.top_k(probs, top_k)
    top = top / jnp.sum(top, axis=-1, keepdims=True)
    chosen = jax.nn.one_hot(index, probs.shape[-1], dtype=jnp.float32)  # [B, S, k, U]
    return jnp.einsum("bsku,bsk->bsu", chosen, top)


def routed_mlp(lp: dict, spec: ModelSpec, act, x_bsd: jax.Array) -> jax.Array:
    """The MoE MLP of one layer: `lp` holds `router` [U, D], `experts_gate_up` [U, 2F, D] and
    `experts_down` [U, D, F]; `act` is the family's activation."""
    weights = routing_weights(lp["router"], x_bsd, spec.experts_per_token)
    gate, up = jnp.split(jnp.einsum("bsd,ufd->bsuf", x_bsd, lp["experts_gate_up"]), 2, axis=-1)
    out = jnp.einsum("bsuf,udf->bsud", act(gate) * up, lp["experts_down"])
    # each expert's output times its weight in float32, cast back, then summed (transformers)
    weighted = (out.astype(jnp.float32) * weights[..., None]).astype(x_bsd.dtype)
    return jnp.sum(weighted, axis=-2)
