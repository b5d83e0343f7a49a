"""Architecture specs: a Hugging Face `config.json` becomes a frozen `ModelSpec`, and one table per
family maps Hugging Face tensor names to pytree paths.

Pytree layout (HF orientation is kept, `[out, in]` for projections, so that row-wise merge rules see
tensors exactly as mergekit does):

    params = {
        "embed":      [V, D],
        "final_norm": [D],
        "lm_head":    [V, D]          (absent when the embeddings are tied),
        "layers":     {short_name: [L, ...]}   every per-layer tensor stacked on axis 0
    }

Shape letters: the one legend is in docs/design.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class TensorInfo:
    """Every fact about one tensor kind, in one place.

    hf: the HF name (after "model.layers.{i}." for layer tensors); shape: from the spec;
    side: "attn" or "mlp" (PS grouping.split_attn_mlp), None for global tensors;
    split: (own axis split over the mesh's model axis, the spec's count that must divide it), or
    None (replicated); embed and lm_head split on vocab (or hidden) instead (parallel/mesh.py);
    fold: how a DFS export folds the running scale C_t into it (docs/design.md, DFS folding):
    "divide" for tensors that write into the residual stream, "sign" for norms that read it (a
    family may override it: `ModelSpec.fold_overrides`); norm: an RMSNorm weight, stored as
    `weight - spec.norm_offset` (Gemma's `1 + weight`).
    """

    hf: str
    shape: Callable[["ModelSpec"], tuple[int, ...]]
    side: str | None = None
    split: tuple[int, str] | None = None
    fold: str | None = None
    norm: bool = False


def _attn(hf, shape, split=None, fold=None, norm=False) -> TensorInfo:
    return TensorInfo(hf, shape, "attn", split, fold, norm)


def _mlp(hf, shape, split=None, fold=None, norm=False) -> TensorInfo:
    return TensorInfo(hf, shape, "mlp", split, fold, norm)


_q = lambda s: s.num_heads * s.head_dim  # noqa: E731 (shape helpers)
_kv = lambda s: s.num_kv_heads * s.head_dim  # noqa: E731
_HEADS, _KV, _FF = (0, "num_heads"), (0, "num_kv_heads"), (0, "intermediate_size")
_EXPERTS = (0, "num_experts")

LAYER_TENSORS: dict[str, TensorInfo] = {
    "attn_norm": _attn("input_layernorm.weight", lambda s: (s.hidden_size,), fold="sign",
                       norm=True),
    "q_proj": _attn("self_attn.q_proj.weight", lambda s: (_q(s), s.hidden_size), _HEADS),
    "k_proj": _attn("self_attn.k_proj.weight", lambda s: (_kv(s), s.hidden_size), _KV),
    "v_proj": _attn("self_attn.v_proj.weight", lambda s: (_kv(s), s.hidden_size), _KV),
    "o_proj": _attn("self_attn.o_proj.weight", lambda s: (s.hidden_size, _q(s)), (1, "num_heads"),
                    fold="divide"),
    "q_bias": _attn("self_attn.q_proj.bias", lambda s: (_q(s),), _HEADS),
    "k_bias": _attn("self_attn.k_proj.bias", lambda s: (_kv(s),), _KV),
    "v_bias": _attn("self_attn.v_proj.bias", lambda s: (_kv(s),), _KV),
    "o_bias": _attn("self_attn.o_proj.bias", lambda s: (s.hidden_size,), fold="divide"),
    "q_norm": _attn("self_attn.q_norm.weight", lambda s: (s.head_dim,), norm=True),
    "k_norm": _attn("self_attn.k_norm.weight", lambda s: (s.head_dim,), norm=True),
    # Phi-3's fused projections: rows [q; k; v] and [gate; up], replicated over the model axis
    # (a split of the fused rows would cut across its parts).
    "qkv_proj": _attn("self_attn.qkv_proj.weight", lambda s: (_q(s) + 2 * _kv(s), s.hidden_size)),
    # Gemma's norms of the attention and MLP outputs: they write into the residual stream.
    "attn_post_norm": _attn("post_attention_layernorm.weight", lambda s: (s.hidden_size,),
                            fold="divide", norm=True),
    "mlp_norm": _mlp("post_attention_layernorm.weight", lambda s: (s.hidden_size,), fold="sign",
                     norm=True),
    "gate_up_proj": _mlp("mlp.gate_up_proj.weight",
                         lambda s: (2 * s.intermediate_size, s.hidden_size)),
    "mlp_post_norm": _mlp("post_feedforward_layernorm.weight", lambda s: (s.hidden_size,),
                          fold="divide", norm=True),
    "gate_proj": _mlp("mlp.gate_proj.weight", lambda s: (s.intermediate_size, s.hidden_size), _FF),
    "up_proj": _mlp("mlp.up_proj.weight", lambda s: (s.intermediate_size, s.hidden_size), _FF),
    "down_proj": _mlp("mlp.down_proj.weight", lambda s: (s.hidden_size, s.intermediate_size),
                      (1, "intermediate_size"), fold="divide"),
    # Mixtral's router [U, D] and experts, fused per layer as transformers 5 (and mergekit 0.1.5)
    # name them: gate_up [U, 2F, D] = [w1; w3] per expert, down [U, D, F] = w2 (checkpoints with
    # per-expert w1/w2/w3 are read through expert_names.py). Split over the model axis by expert.
    "router": _mlp("mlp.gate.weight", lambda s: (s.num_experts, s.hidden_size)),
    "experts_gate_up": _mlp("mlp.experts.gate_up_proj", lambda s: (
        s.num_experts, 2 * s.intermediate_size, s.hidden_size), _EXPERTS),
    "experts_down": _mlp("mlp.experts.down_proj", lambda s: (
        s.num_experts, s.hidden_size, s.intermediate_size), _EXPERTS, fold="divide"),
    "gate_bias": _mlp("mlp.gate_proj.bias", lambda s: (s.intermediate_size,), _FF),
    "up_bias": _mlp("mlp.up_proj.bias", lambda s: (s.intermediate_size,), _FF),
    "down_bias": _mlp("mlp.down_proj.bias", lambda s: (s.hidden_size,), fold="divide"),
}

GLOBAL_TENSORS: dict[str, TensorInfo] = {
    "embed": TensorInfo("model.embed_tokens.weight", lambda s: (s.vocab_size, s.hidden_size)),
    "final_norm": TensorInfo("model.norm.weight", lambda s: (s.hidden_size,), fold="sign",
                             norm=True),
    "lm_head": TensorInfo("lm_head.weight", lambda s: (s.vocab_size, s.hidden_size)),
}

# Buffers some checkpoints carry that hold no parameters (recomputed from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding parameters; `kind` is one of default, linear, llama3, longrope (Phi-3:
    per-frequency `short_factor` up to `original_max_position_embeddings` positions, `long_factor`
    past them, cos and sin times `attention_factor`)."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """Everything about a decoder that changes its maths. Hashable, so it can be a jit static arg."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeSpec
    tie_word_embeddings: bool
    hidden_act: str
    layer_tensors: tuple[str, ...]   # short names present in every layer
    sliding_window: int | None      # window size for the layers marked in `sliding_layers`
    sliding_layers: tuple[bool, ...]
    # Family facts (families.py fills them; the defaults are Llama's):
    family: str = "llama"
    norm_offset: float = 0.0        # an RMSNorm multiplies by norm_offset + stored weight
    embed_scale: bool = False       # embeddings times sqrt(hidden_size) (in the weights' dtype)
    query_scale: float | None = None  # attention scores' factor; None: head_dim ** -0.5
    attn_softcap: float | None = None   # scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    local_rope: RopeSpec | None = None  # the sliding layers' own rotary embedding (Gemma 3)
    hf_renames: tuple[tuple[str, str], ...] = ()       # short name -> this family's HF name
    fold_overrides: tuple[tuple[str, str | None], ...] = ()  # short name -> DFS fold rule
    num_experts: int = 0            # Mixtral: experts per layer (0: a dense MLP)
    experts_per_token: int = 0      # Mixtral: top-k routing

    @property
    def global_tensors(self) -> tuple[str, ...]:
        return ("embed", "final_norm") + (() if self.tie_word_embeddings else ("lm_head",))

    def layer_shape(self, name: str) -> tuple[int, ...]:
        return tuple(LAYER_TENSORS[name].shape(self))

    def global_shape(self, name: str) -> tuple[int, ...]:
        return tuple(GLOBAL_TENSORS[name].shape(self))

    def with_num_layers(self, sliding_layers: tuple[bool, ...]) -> "ModelSpec":
        """The same architecture with another layer count (frankenmerges, DFS exports)."""
        return dataclasses.replace(self, num_layers=len(sliding_layers),
                                   sliding_layers=tuple(sliding_layers))


def layer_hf_name(short: str, layer, spec: ModelSpec | None = None) -> str:
    """The HF name of a layer tensor (`layer` may be "{}" for a template); `spec` gives the
    family's renames (Gemma's MLP norm is `pre_feedforward_layernorm`)."""
    hf = dict(spec.hf_renames).get(short) if spec is not None else None
    return f"model.layers.{layer}.{hf or LAYER_TENSORS[short].hf}"


def fold_rule(spec: ModelSpec, short: str) -> str | None:
    """How a DFS export folds the running scale into a tensor of this family (see TensorInfo)."""
    overrides = dict(spec.fold_overrides)
    return overrides[short] if short in overrides else LAYER_TENSORS[short].fold


def global_hf_name(short: str) -> str:
    return GLOBAL_TENSORS[short].hf


def hf_tensor_names(spec: ModelSpec) -> dict[str, tuple[str, int | None]]:
    """Every HF tensor name the spec expects -> (short name, layer index or None), in HF order."""
    names: dict[str, tuple[str, int | None]] = {global_hf_name("embed"): ("embed", None)}
    for layer in range(spec.num_layers):
        for short in spec.layer_tensors:
            names[layer_hf_name(short, layer, spec)] = (short, layer)
    names[global_hf_name("final_norm")] = ("final_norm", None)
    if not spec.tie_word_embeddings:
        names[global_hf_name("lm_head")] = ("lm_head", None)
    return names
