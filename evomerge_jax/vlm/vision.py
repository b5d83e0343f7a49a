"""The CLIP and SigLIP vision transformers as pure functions, returning the hidden states LLaVA
selects from (transformers' `hidden_states` tuple: index 0 the embeddings, after CLIP's
pre-norm; index i the output of layer i; the final post-norm is never part of it).

Numerics follow transformers: LayerNorm and softmax in float32, matmuls in the weights' dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .spec import VisionSpec

ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def layer_norm(x, weight, bias, eps: float):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    normed = (x32 - mean) * jax.lax.rsqrt(var + eps)
    return (normed * weight.astype(jnp.float32) + bias.astype(jnp.float32)).astype(x.dtype)


def _linear(x, w, b):
    return jnp.einsum("...i,oi->...o", x, w) + b


def patch_embeddings(params: dict, vspec: VisionSpec, pixels_nchw) -> jax.Array:
    """The stride-P convolution as a matmul over non-overlapping patches: [N, G·G, D]."""
    n, c, hgt, wid = pixels_nchw.shape
    p = vspec.patch_size
    if (hgt, wid) != (vspec.image_size, vspec.image_size) or c != vspec.num_channels:
        raise ValueError(f"pixel_values tiles are {c}x{hgt}x{wid}, the vision tower takes "
                         f"{vspec.num_channels}x{vspec.image_size}x{vspec.image_size}")
    weight = params["patch_embed"]
    x = pixels_nchw.astype(weight.dtype).reshape(n, c, hgt // p, p, wid // p, p)
    patches = x.transpose(0, 2, 4, 1, 3, 5).reshape(n, (hgt // p) * (wid // p), c * p * p)
    h = jnp.einsum("npk,dk->npd", patches, weight.reshape(weight.shape[0], -1))
    return h + params["patch_bias"] if "patch_bias" in params else h


def embeddings(params: dict, vspec: VisionSpec, pixels_nchw) -> jax.Array:
    """hidden_states[0]: patches (+ CLIP's class token) + positions (+ CLIP's pre-norm)."""
    h = patch_embeddings(params, vspec, pixels_nchw)
    if vspec.kind == "clip":
        cls = jnp.broadcast_to(params["class_embed"].astype(h.dtype), (h.shape[0], 1, h.shape[2]))
        h = jnp.concatenate([cls, h], axis=1)
    h = h + params["pos_embed"][None]
    if vspec.kind == "clip":
        h = layer_norm(h, params["pre_norm_w"], params["pre_norm_b"], vspec.layer_norm_eps)
    return h


def encoder_layer(lp: dict, vspec: VisionSpec, h):
    """Pre-norm attention (bidirectional, no mask) and MLP blocks."""
    n, t, d = h.shape
    heads = vspec.num_heads
    e = d // heads
    x = layer_norm(h, lp["ln1_w"], lp["ln1_b"], vspec.layer_norm_eps)
    q = _linear(x, lp["q_w"], lp["q_b"]).reshape(n, t, heads, e)
    k = _linear(x, lp["k_w"], lp["k_b"]).reshape(n, t, heads, e)
    v = _linear(x, lp["v_w"], lp["v_b"]).reshape(n, t, heads, e)
    scores = jnp.einsum("nshe,nthe->nhst", q, k).astype(jnp.float32) * (e ** -0.5)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    attn = jnp.einsum("nhst,nthe->nshe", probs, v).reshape(n, t, d)
    h = h + _linear(attn, lp["o_w"], lp["o_b"])
    x = layer_norm(h, lp["ln2_w"], lp["ln2_b"], vspec.layer_norm_eps)
    x = ACTIVATIONS[vspec.hidden_act](_linear(x, lp["fc1_w"], lp["fc1_b"]))
    return h + _linear(x, lp["fc2_w"], lp["fc2_b"])


def hidden_states(params: dict, vspec: VisionSpec, pixels_nchw, upto: int) -> jax.Array:
    """hidden_states[0..upto] stacked: [upto + 1, N, T, D] (layers past `upto` are not run)."""
    h0 = embeddings(params, vspec, pixels_nchw)
    if upto == 0:
        return h0[None]
    layers = jax.tree_util.tree_map(lambda x: x[:upto], params["layers"])

    def step(h, lp):
        h = encoder_layer(lp, vspec, h)
        return h, h

    _, hs = jax.lax.scan(step, h0, layers)
    return jnp.concatenate([h0[None], hs], axis=0)
