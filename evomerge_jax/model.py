"""The decoder as pure functions over the parameter pytree of `arch`.

`decoder_layer` is the unit everything else composes: the plain forward scans it over the stacked
layer axis, the PS population pass vmaps it over candidates after merging, and the DFS pass applies
it slot by slot. Numerics follow transformers: RMSNorm and softmax in float32, every matmul in the
parameters' dtype.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .arch import ModelSpec, RopeSpec

_ACTIVATIONS = {
    "silu": jax.nn.silu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}


def rope_inv_freq(rope: RopeSpec, head_dim: int, long: bool = False) -> np.ndarray:
    """Inverse frequencies [E/2] in float32, with linear or llama3 scaling (Llama 3.1 report), or
    longrope's per-frequency factors (the long ones when `long`)."""
    exponent = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(rope.theta) ** exponent)).astype(np.float32)
    if rope.kind == "longrope":
        ext = np.asarray(rope.long_factor if long else rope.short_factor, np.float32)
        inv = (np.float32(1.0) / (ext * np.float32(rope.theta) ** exponent)).astype(np.float32)
    elif rope.kind == "linear":
        inv = inv / np.float32(rope.factor)
    elif rope.kind == "llama3":
        old_len = rope.original_max_position_embeddings
        low_wavelen = old_len / rope.low_freq_factor
        high_wavelen = old_len / rope.high_freq_factor
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old_len / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    return inv


def rope_tables(rope: RopeSpec, head_dim: int,
                positions_bs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, S, E] for integer positions, in float32. Longrope takes its long factors
    when the call's largest position reaches past the original context, as transformers does."""
    inv = jnp.asarray(rope_inv_freq(rope, head_dim))
    if rope.kind == "longrope":
        past = jnp.max(positions_bs) + 1 > rope.original_max_position_embeddings
        inv = jnp.where(past, jnp.asarray(rope_inv_freq(rope, head_dim, long=True)), inv)
    angles_bsf = positions_bs.astype(jnp.float32)[..., None] * inv
    angles_bse = jnp.concatenate([angles_bsf, angles_bsf], axis=-1)
    scale = np.float32(rope.attention_factor)
    return jnp.cos(angles_bse) * scale, jnp.sin(angles_bse) * scale


def _rotate(x_bsne: jax.Array, cos_bse: jax.Array, sin_bse: jax.Array) -> jax.Array:
    half = x_bsne.shape[-1] // 2
    rotated = jnp.concatenate([-x_bsne[..., half:], x_bsne[..., :half]], axis=-1)
    cos, sin = cos_bse[:, :, None, :].astype(x_bsne.dtype), sin_bse[:, :, None, :].astype(x_bsne.dtype)
    return x_bsne * cos + rotated * sin


def rms_norm(x: jax.Array, weight: jax.Array, eps: float, offset: float = 0.0) -> jax.Array:
    """RMSNorm as transformers computes it: Llama casts before the weight, Gemma (offset 1, the
    weight stored as `weight - 1`) multiplies in float32 and casts after."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    if offset:
        return (normed * (offset + weight.astype(jnp.float32))).astype(x.dtype)
    return weight * normed.astype(x.dtype)


def _softcap(x: jax.Array, cap: float | None) -> jax.Array:
    return x if cap is None else jnp.tanh(x / cap) * cap


def attention_bias(key_valid_bt: jax.Array, query_index_bs: jax.Array,
                   window: int | None) -> jax.Array:
    """Additive mask [B, 1, 1, S, T]: 0 where a query may see a key (valid, not in the future,
    within the sliding window), the dtype's minimum elsewhere. Indices are cache slots."""
    key_index_t = jnp.arange(key_valid_bt.shape[1])
    q_bs1 = query_index_bs[:, :, None]
    allowed = key_valid_bt[:, None, :].astype(bool) & (key_index_t[None, None, :] <= q_bs1)
    if window is not None:
        allowed = allowed & (q_bs1 - key_index_t[None, None, :] < window)
    return jnp.where(allowed, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :, :]


class Context(NamedTuple):
    """Per-call inputs shared by all layers: rotary tables (the sliding layers' own, which are
    the same unless the family gives them another rope) and both mask variants."""

    cos: jax.Array
    sin: jax.Array
    full_bias: jax.Array
    sliding_bias: jax.Array
    local_cos: jax.Array
    local_sin: jax.Array


def make_context(spec: ModelSpec, positions_bs, key_valid_bt, query_index_bs) -> Context:
    cos, sin = rope_tables(spec.rope, spec.head_dim, positions_bs)
    local_cos, local_sin = (cos, sin) if spec.local_rope is None else rope_tables(
        spec.local_rope, spec.head_dim, positions_bs)
    full = attention_bias(key_valid_bt, query_index_bs, None)
    sliding = (attention_bias(key_valid_bt, query_index_bs, spec.sliding_window)
               if spec.sliding_window is not None else full)
    return Context(cos, sin, full, sliding, local_cos, local_sin)


def _linear(x, weight_oi, bias=None):
    y = jnp.einsum("...i,oi->...o", x, weight_oi)
    return y if bias is None else y + bias


def _qkv(lp: dict, spec: ModelSpec, x):
    """Queries [B, S, H·E], keys and values [B, S, N·E]: separate or fused (Phi-3) projections."""
    if "qkv_proj" in lp:
        qkv = _linear(x, lp["qkv_proj"])
        q_size, kv_size = spec.num_heads * spec.head_dim, spec.num_kv_heads * spec.head_dim
        return qkv[..., :q_size], qkv[..., q_size:q_size + kv_size], qkv[..., q_size + kv_size:]
    return (_linear(x, lp["q_proj"], lp.get("q_bias")), _linear(x, lp["k_proj"], lp.get("k_bias")),
            _linear(x, lp["v_proj"], lp.get("v_bias")))


def _mlp(lp: dict, spec: ModelSpec, x):
    act = _ACTIVATIONS[spec.hidden_act]
    if "gate_up_proj" in lp:
        gate, up = jnp.split(_linear(x, lp["gate_up_proj"]), 2, axis=-1)
    else:
        gate = _linear(x, lp["gate_proj"], lp.get("gate_bias"))
        up = _linear(x, lp["up_proj"], lp.get("up_bias"))
    return _linear(act(gate) * up, lp["down_proj"], lp.get("down_bias"))


def decoder_layer(lp: dict, spec: ModelSpec, h_bsd: jax.Array, ctx: Context, is_sliding,
                  cache: tuple[jax.Array, jax.Array] | None = None, cache_index=None):
    """One pre-norm decoder layer (with Gemma's post-norms when the layer holds them). With a KV
    cache ([B, T, N, E] each), the new keys and values are written at `cache_index` and attention
    runs over the whole cache; returns (h, cache)."""
    b, s, _ = h_bsd.shape
    n, e = spec.num_kv_heads, spec.head_dim
    g = spec.num_heads // n
    norm = lambda x, w: rms_norm(x, w, spec.rms_norm_eps, spec.norm_offset)  # noqa: E731
    x = norm(h_bsd, lp["attn_norm"])
    q, k, v = _qkv(lp, spec, x)
    q, k, v = q.reshape(b, s, n * g, e), k.reshape(b, s, n, e), v.reshape(b, s, n, e)
    if "q_norm" in lp:  # Qwen3, Gemma 3: per-head RMSNorm before the rotary embedding
        q, k = norm(q, lp["q_norm"]), norm(k, lp["k_norm"])
    cos = jnp.where(is_sliding, ctx.local_cos, ctx.cos)
    sin = jnp.where(is_sliding, ctx.local_sin, ctx.sin)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    if cache is not None:
        k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, cache_index, 0, 0))
        v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, cache_index, 0, 0))
        cache = (k, v)
    q_bsnge = q.reshape(b, s, n, g, e)
    scale = spec.query_scale if spec.query_scale is not None else e ** -0.5
    scores = jnp.einsum("bsnge,btne->bngst", q_bsnge, k).astype(jnp.float32) * scale
    scores = _softcap(scores, spec.attn_softcap)
    scores = scores + jnp.where(is_sliding, ctx.sliding_bias, ctx.full_bias)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    attn = jnp.einsum("bngst,btne->bsnge", probs, v).reshape(b, s, n * g * e)
    out = _linear(attn, lp["o_proj"], lp.get("o_bias"))
    h_bsd = h_bsd + (norm(out, lp["attn_post_norm"]) if "attn_post_norm" in lp else out)
    out = _mlp(lp, spec, norm(h_bsd, lp["mlp_norm"]))
    return h_bsd + (norm(out, lp["mlp_post_norm"]) if "mlp_post_norm" in lp else out), cache


def positions_from_mask(mask_bs: jax.Array) -> jax.Array:
    """Position ids that make a padded row equal its unpadded self (left or right padding)."""
    return jnp.maximum(jnp.cumsum(mask_bs.astype(jnp.int32), axis=-1) - 1, 0)


def embed(params: dict, spec: ModelSpec, tokens_bs: jax.Array) -> jax.Array:
    """Token embeddings; Gemma scales them by sqrt(hidden) rounded to the weights' dtype."""
    table = params["embed"]
    h = jnp.take(table, tokens_bs, axis=0)
    if spec.embed_scale:
        h = h * jnp.asarray(np.float32(spec.hidden_size ** 0.5), table.dtype)
    return h


def unembed(params: dict, spec: ModelSpec, h_bsd: jax.Array) -> jax.Array:
    """Final norm and LM head; logits in float32 (soft-capped where the family does)."""
    h = rms_norm(h_bsd, params["final_norm"], spec.rms_norm_eps, spec.norm_offset)
    head = params["embed"] if spec.tie_word_embeddings else params["lm_head"]
    return _softcap(jnp.einsum("bsd,vd->bsv", h, head).astype(jnp.float32), spec.final_softcap)


def sliding_flags(spec: ModelSpec) -> jax.Array:
    return jnp.asarray(np.array(spec.sliding_layers, dtype=bool))


def splice_embeds(text_embeds_bsd: jax.Array, image_embeds_bsd: jax.Array,
                  image_mask_bs: jax.Array) -> jax.Array:
    """A vision-language model's input embeddings: the image features where the mask is set (the
    image-token positions), the token embeddings elsewhere, in the token embeddings' dtype."""
    return jnp.where(image_mask_bs[..., None], image_embeds_bsd.astype(text_embeds_bsd.dtype),
                     text_embeds_bsd)


def hidden_states_from_embeds(params: dict, spec: ModelSpec, h_bsd: jax.Array,
                              mask_bs) -> jax.Array:
    """Input embeddings [B, S, D] through every layer (lax.scan over the stacked axis); before the
    final norm."""
    positions = positions_from_mask(mask_bs)
    index = jnp.broadcast_to(jnp.arange(h_bsd.shape[1]), h_bsd.shape[:2])
    ctx = make_context(spec, positions, mask_bs, index)

    def step(h, layer):
        lp, is_sliding = layer
        return decoder_layer(lp, spec, h, ctx, is_sliding)[0], None

    h, _ = jax.lax.scan(step, h_bsd, (params["layers"], sliding_flags(spec)))
    return h


def hidden_states(params: dict, spec: ModelSpec, tokens_bs, mask_bs) -> jax.Array:
    """Token embeddings through every layer; before the final norm."""
    return hidden_states_from_embeds(params, spec, embed(params, spec, tokens_bs), mask_bs)


def forward(params: dict, spec: ModelSpec, tokens_bs, mask_bs) -> jax.Array:
    """Logits [B, S, V] (float32)."""
    return unembed(params, spec, hidden_states(params, spec, tokens_bs, mask_bs))
