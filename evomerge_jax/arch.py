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

from .errors import ConfigError


@dataclass(frozen=True)
class TensorInfo:
    """Every fact about one tensor kind, in one place.

    hf: the HF name (after "model.layers.{i}." for layer tensors); shape: from the spec;
    side: "attn" or "mlp" (PS grouping.split_attn_mlp), None for global tensors;
    split: (own axis split over the mesh's model axis, the spec's count that must divide it), or
    None (replicated); embed and lm_head split on vocab (or hidden) instead (parallel/mesh.py);
    fold: how a DFS export folds the running scale C_t into it (docs/design.md, DFS folding):
    "divide" for tensors that write into the residual stream, "sign" for norms that read it.
    """

    hf: str
    shape: Callable[["ModelSpec"], tuple[int, ...]]
    side: str | None = None
    split: tuple[int, str] | None = None
    fold: str | None = None


def _attn(hf, shape, split=None, fold=None) -> TensorInfo:
    return TensorInfo(hf, shape, "attn", split, fold)


def _mlp(hf, shape, split=None, fold=None) -> TensorInfo:
    return TensorInfo(hf, shape, "mlp", split, fold)


_q = lambda s: s.num_heads * s.head_dim  # noqa: E731 (shape helpers)
_kv = lambda s: s.num_kv_heads * s.head_dim  # noqa: E731
_HEADS, _KV, _FF = (0, "num_heads"), (0, "num_kv_heads"), (0, "intermediate_size")

LAYER_TENSORS: dict[str, TensorInfo] = {
    "attn_norm": _attn("input_layernorm.weight", lambda s: (s.hidden_size,), fold="sign"),
    "q_proj": _attn("self_attn.q_proj.weight", lambda s: (_q(s), s.hidden_size), _HEADS),
    "k_proj": _attn("self_attn.k_proj.weight", lambda s: (_kv(s), s.hidden_size), _KV),
    "v_proj": _attn("self_attn.v_proj.weight", lambda s: (_kv(s), s.hidden_size), _KV),
    "o_proj": _attn("self_attn.o_proj.weight", lambda s: (s.hidden_size, _q(s)), (1, "num_heads"),
                    fold="divide"),
    "q_bias": _attn("self_attn.q_proj.bias", lambda s: (_q(s),), _HEADS),
    "k_bias": _attn("self_attn.k_proj.bias", lambda s: (_kv(s),), _KV),
    "v_bias": _attn("self_attn.v_proj.bias", lambda s: (_kv(s),), _KV),
    "o_bias": _attn("self_attn.o_proj.bias", lambda s: (s.hidden_size,), fold="divide"),
    "q_norm": _attn("self_attn.q_norm.weight", lambda s: (s.head_dim,)),
    "k_norm": _attn("self_attn.k_norm.weight", lambda s: (s.head_dim,)),
    "mlp_norm": _mlp("post_attention_layernorm.weight", lambda s: (s.hidden_size,), fold="sign"),
    "gate_proj": _mlp("mlp.gate_proj.weight", lambda s: (s.intermediate_size, s.hidden_size), _FF),
    "up_proj": _mlp("mlp.up_proj.weight", lambda s: (s.intermediate_size, s.hidden_size), _FF),
    "down_proj": _mlp("mlp.down_proj.weight", lambda s: (s.hidden_size, s.intermediate_size),
                      (1, "intermediate_size"), fold="divide"),
    "gate_bias": _mlp("mlp.gate_proj.bias", lambda s: (s.intermediate_size,), _FF),
    "up_bias": _mlp("mlp.up_proj.bias", lambda s: (s.intermediate_size,), _FF),
    "down_bias": _mlp("mlp.down_proj.bias", lambda s: (s.hidden_size,), fold="divide"),
}

GLOBAL_TENSORS: dict[str, TensorInfo] = {
    "embed": TensorInfo("model.embed_tokens.weight", lambda s: (s.vocab_size, s.hidden_size)),
    "final_norm": TensorInfo("model.norm.weight", lambda s: (s.hidden_size,), fold="sign"),
    "lm_head": TensorInfo("lm_head.weight", lambda s: (s.vocab_size, s.hidden_size)),
}

# Buffers some checkpoints carry that hold no parameters (recomputed from the config).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

_CORE = ("attn_norm", "q_proj", "k_proj", "v_proj", "o_proj", "mlp_norm", "gate_proj", "up_proj",
         "down_proj")
_ATTN_BIAS_ALL = ("q_bias", "k_bias", "v_bias", "o_bias")
_MLP_BIAS = ("gate_bias", "up_bias", "down_bias")


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embedding parameters; `kind` is one of default, linear, llama3."""

    theta: float = 10000.0
    kind: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


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


def layer_hf_name(short: str, layer: int) -> str:
    return f"model.layers.{layer}.{LAYER_TENSORS[short].hf}"


def global_hf_name(short: str) -> str:
    return GLOBAL_TENSORS[short].hf


def hf_tensor_names(spec: ModelSpec) -> dict[str, tuple[str, int | None]]:
    """Every HF tensor name the spec expects -> (short name, layer index or None), in HF order."""
    names: dict[str, tuple[str, int | None]] = {global_hf_name("embed"): ("embed", None)}
    for layer in range(spec.num_layers):
        for short in spec.layer_tensors:
            names[layer_hf_name(short, layer)] = (short, layer)
    names[global_hf_name("final_norm")] = ("final_norm", None)
    if not spec.tie_word_embeddings:
        names[global_hf_name("lm_head")] = ("lm_head", None)
    return names


def _family_tensors(arch: str, cfg: dict, where: str) -> tuple[str, ...]:
    if arch in ("LlamaForCausalLM", "MistralForCausalLM"):
        extra = _ATTN_BIAS_ALL if cfg.get("attention_bias", False) else ()
        extra += _MLP_BIAS if cfg.get("mlp_bias", False) else ()
        return _CORE + extra
    if arch == "Qwen2ForCausalLM":
        return _CORE + ("q_bias", "k_bias", "v_bias")
    if arch == "Qwen3ForCausalLM":
        extra = _ATTN_BIAS_ALL if cfg.get("attention_bias", False) else ()
        return _CORE + ("q_norm", "k_norm") + extra
    raise ConfigError(
        f"{where}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")


SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                           "Qwen3ForCausalLM")
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")


def _rope_spec(cfg: dict, where: str) -> RopeSpec:
    # transformers 5 writes `rope_parameters` (theta inside); 4.x writes `rope_theta` + `rope_scaling`.
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = float(merged.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = merged.get("rope_type", merged.get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(f"{where}: rope type {kind!r} is not supported (default, linear, llama3)")
    return RopeSpec(
        theta=theta, kind=kind, factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(merged.get(
            "original_max_position_embeddings", cfg.get("max_position_embeddings", 8192))))


def _sliding_layers(arch: str, cfg: dict, num_layers: int) -> tuple[int | None, tuple[bool, ...]]:
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        flags = tuple(t == "sliding_attention" for t in layer_types)
    elif arch == "MistralForCausalLM":
        flags = (window is not None,) * num_layers
    elif arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and cfg.get("use_sliding_window", False):
        first = int(cfg.get("max_window_layers", num_layers))
        flags = tuple(i >= first for i in range(num_layers))
    else:
        flags = (False,) * num_layers
    if any(flags) and window is None:
        flags = (False,) * num_layers
    return (int(window) if any(flags) else None), flags


def spec_from_config(cfg: dict, where: str = "config.json") -> ModelSpec:
    """Validate an HF config dict and build its spec. `where` names the file in error messages."""
    archs = cfg.get("architectures") or []
    if not archs:
        raise ConfigError(f"{where}: no 'architectures' entry; supported: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    arch = archs[0]
    tensors = _family_tensors(arch, cfg, where)
    try:
        hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        num_layers = int(cfg["num_hidden_layers"])
        spec_fields = dict(
            vocab_size=int(cfg["vocab_size"]), intermediate_size=int(cfg["intermediate_size"]),
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)))
    except KeyError as missing:
        raise ConfigError(f"{where}: missing required key {missing.args[0]!r}") from None
    act = cfg.get("hidden_act", "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"{where}: hidden_act {act!r} is not supported "
                          f"({', '.join(SUPPORTED_ACTIVATIONS)})")
    if heads % spec_fields["num_kv_heads"]:
        raise ConfigError(f"{where}: num_attention_heads={heads} is not a multiple of "
                          f"num_key_value_heads={spec_fields['num_kv_heads']}")
    window, flags = _sliding_layers(arch, cfg, num_layers)
    if len(flags) != num_layers:
        raise ConfigError(f"{where}: layer_types has {len(flags)} entries for {num_layers} layers")
    return ModelSpec(
        architecture=arch, hidden_size=hidden, num_layers=num_layers, num_heads=heads,
        rope=_rope_spec(cfg, where), tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        hidden_act=act, layer_tensors=tensors, sliding_window=window, sliding_layers=flags,
        **spec_fields)


def config_with_num_layers(cfg: dict, spec: ModelSpec) -> dict:
    """An HF config dict describing `spec`'s layer count and per-layer attention types."""
    out = dict(cfg)
    out["num_hidden_layers"] = spec.num_layers
    if "layer_types" in cfg or any(spec.sliding_layers):
        out["layer_types"] = ["sliding_attention" if s else "full_attention"
                              for s in spec.sliding_layers]
    if "max_window_layers" in cfg:
        # layer_types is authoritative when present; keep the old key consistent for 4.x readers.
        first_sliding = next((i for i, s in enumerate(spec.sliding_layers) if s), spec.num_layers)
        out["max_window_layers"] = first_sliding
    return out
