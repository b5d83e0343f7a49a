"""The model families the forward supports, as data: one `Family` per group of HF architectures
says which tensors a layer holds, how its config keys read, and what changes in the maths (norm
offset, embedding scale, soft-capping, post-norms, per-layer-type rotary embeddings). The decoder
(model.py), the loader, the merges and the DFS export read these facts off the `ModelSpec`;
nothing else branches on the architecture name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from .arch import ModelSpec, RopeSpec
from .errors import ConfigError

_CORE = ("attn_norm", "q_proj", "k_proj", "v_proj", "o_proj", "mlp_norm", "gate_proj", "up_proj",
         "down_proj")
_ATTN_BIAS_ALL = ("q_bias", "k_bias", "v_bias", "o_bias")
_MLP_BIAS = ("gate_bias", "up_bias", "down_bias")
_GEMMA_CORE = _CORE + ("attn_post_norm", "mlp_post_norm")
_PHI3_CORE = ("attn_norm", "qkv_proj", "o_proj", "mlp_norm", "gate_up_proj", "down_proj")


def _llama_tensors(cfg: dict) -> tuple[str, ...]:
    extra = _ATTN_BIAS_ALL if cfg.get("attention_bias", False) else ()
    return _CORE + extra + (_MLP_BIAS if cfg.get("mlp_bias", False) else ())


def _qwen3_tensors(cfg: dict) -> tuple[str, ...]:
    return _CORE + ("q_norm", "k_norm") + (_ATTN_BIAS_ALL if cfg.get("attention_bias") else ())


@dataclass(frozen=True)
class Family:
    """What one family changes. `sliding`: how its layers are marked when config.json has no
    `layer_types` ("all": every layer when `sliding_window` is set, as Mistral and Phi-3;
    "qwen": from `max_window_layers` when `use_sliding_window`; "pattern": every layer but each
    `pattern`-th, as Gemma 2 and 3; "none")."""

    name: str
    architectures: tuple[str, ...]
    tensors: Callable[[dict], tuple[str, ...]]
    act_keys: tuple[str, ...] = ("hidden_act",)
    sliding: str = "none"
    pattern: tuple[str, int] | None = None      # (config key, default) of the sliding pattern
    gemma: bool = False    # 1 + weight norms, sqrt(hidden) embeddings, post-norms,
                           # query_pre_attn_scalar, soft-capping
    local_rope: bool = False                    # sliding layers have their own rope (Gemma 3)
    attn_softcap: bool = True   # reads attn_logit_softcapping (transformers' Gemma 3 ignores it)
    hf_renames: tuple[tuple[str, str], ...] = ()
    fold_overrides: tuple[tuple[str, str | None], ...] = ()
    unsupported_keys: tuple[tuple[str, object], ...] = field(default=())  # key -> allowed value


# Gemma's o_proj and down_proj feed a post-norm, not the residual stream: the post-norms fold.
_GEMMA_FOLDS = (("o_proj", None), ("down_proj", None))
_GEMMA_RENAMES = (("mlp_norm", "pre_feedforward_layernorm.weight"),)

FAMILIES: tuple[Family, ...] = (
    Family("llama", ("LlamaForCausalLM",), _llama_tensors),
    Family("mistral", ("MistralForCausalLM",), _llama_tensors, sliding="all"),
    Family("qwen2", ("Qwen2ForCausalLM",), lambda cfg: _CORE + ("q_bias", "k_bias", "v_bias"),
           sliding="qwen"),
    Family("qwen3", ("Qwen3ForCausalLM",), _qwen3_tensors, sliding="qwen"),
    Family("gemma2", ("Gemma2ForCausalLM",), lambda cfg: _GEMMA_CORE,
           act_keys=("hidden_activation", "hidden_act"), sliding="pattern", pattern=("", 2),
           gemma=True, hf_renames=_GEMMA_RENAMES, fold_overrides=_GEMMA_FOLDS),
    Family("gemma3_text", ("Gemma3ForCausalLM",), lambda cfg: _GEMMA_CORE + ("q_norm", "k_norm"),
           act_keys=("hidden_activation", "hidden_act"), sliding="pattern",
           pattern=("sliding_window_pattern", 6), gemma=True, local_rope=True, attn_softcap=False,
           hf_renames=_GEMMA_RENAMES, fold_overrides=_GEMMA_FOLDS,
           unsupported_keys=(("use_bidirectional_attention", False),)),
    Family("phi3", ("Phi3ForCausalLM",), lambda cfg: _PHI3_CORE, sliding="all",
           fold_overrides=(("qkv_proj", None), ("gate_up_proj", None))),
)
_BY_ARCH = {arch: fam for fam in FAMILIES for arch in fam.architectures}
SUPPORTED_ARCHITECTURES = tuple(_BY_ARCH)
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")
_ROPE_KINDS = ("default", "linear", "llama3", "longrope")
# Architectures users try that we recognise but do not run, with the reason.
_KNOWN_UNSUPPORTED = {
    **{arch: "a vision-language model: evomerge_jax.load gives its VlmCheckpoint; `evomerge "
             "extract-lm` writes its language model as a text-LM dir" for arch in
       ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")},
    "Gemma3ForConditionalGeneration": "Gemma 3 with its vision tower is not supported; only the "
                                      "text model (Gemma3ForCausalLM, model_type gemma3_text)",
}


def family_of(arch: str, where: str) -> Family:
    if arch in _BY_ARCH:
        return _BY_ARCH[arch]
    reason = _KNOWN_UNSUPPORTED.get(arch, "supported: " + ", ".join(SUPPORTED_ARCHITECTURES))
    raise ConfigError(f"{where}: architectures: unsupported architecture {arch!r}; {reason}")


def _rope(params: dict, cfg: dict, where: str, key: str) -> RopeSpec:
    theta = float(params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind not in _ROPE_KINDS:
        raise ConfigError(f"{where}: {key}: rope type {kind!r} is not supported "
                          f"({', '.join(_ROPE_KINDS)})")
    if any(float(d.get("partial_rotary_factor") or 1.0) != 1.0 for d in (params, cfg)):
        raise ConfigError(f"{where}: partial_rotary_factor: only 1.0 is supported")
    max_pos = int(cfg.get("max_position_embeddings", 8192))
    original = int(params.get("original_max_position_embeddings")
                   or cfg.get("original_max_position_embeddings") or max_pos)
    extra = {}
    if kind == "longrope":
        factor = params.get("factor") or max_pos / original
        attention = params.get("attention_factor")
        if attention is None:
            attention = 1.0 if factor <= 1.0 else math.sqrt(
                1 + math.log(factor) / math.log(original))
        extra = dict(short_factor=tuple(float(x) for x in params["short_factor"]),
                     long_factor=tuple(float(x) for x in params["long_factor"]),
                     attention_factor=float(attention))
    return RopeSpec(theta=theta, kind=kind, factor=float(params.get("factor") or 1.0),
                    low_freq_factor=float(params.get("low_freq_factor", 1.0)),
                    high_freq_factor=float(params.get("high_freq_factor", 4.0)),
                    original_max_position_embeddings=original, **extra)


def _ropes(fam: Family, cfg: dict, where: str) -> tuple[RopeSpec, RopeSpec | None]:
    """(the rope of full-attention layers, the sliding layers' own rope or None).

    transformers 5 writes `rope_parameters` (theta inside; per layer type for Gemma 3); 4.x writes
    `rope_theta` + `rope_scaling` (+ Gemma 3's `rope_local_base_freq`)."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    if not fam.local_rope:
        return _rope({**scaling, **params}, cfg, where, "rope_parameters"), None
    if "full_attention" in params or "sliding_attention" in params:
        full = dict(params.get("full_attention") or {})
        local = dict(params.get("sliding_attention") or {})
    else:
        full = {"rope_theta": cfg.get("rope_theta", 1_000_000.0), **scaling, **params}
        local = {"rope_theta": cfg.get("rope_local_base_freq", 10_000.0)}
    full.setdefault("rope_theta", 1_000_000.0)
    local.setdefault("rope_theta", 10_000.0)
    return (_rope(full, cfg, where, "rope_parameters.full_attention"),
            _rope(local, cfg, where, "rope_parameters.sliding_attention"))


def _sliding_layers(fam: Family, cfg: dict, num_layers: int) -> tuple[int | None, tuple[bool, ...]]:
    window = cfg.get("sliding_window")
    layer_types = cfg.get("layer_types")
    if layer_types is not None:
        flags = tuple(t == "sliding_attention" for t in layer_types)
    elif fam.sliding == "all":
        flags = (window is not None,) * num_layers
    elif fam.sliding == "qwen" and cfg.get("use_sliding_window", False):
        first = int(cfg.get("max_window_layers", num_layers))
        flags = tuple(i >= first for i in range(num_layers))
    elif fam.sliding == "pattern":
        key, default = fam.pattern
        every = int(cfg.get(key, default)) if key else default
        flags = tuple(bool((i + 1) % every) for i in range(num_layers))
    else:
        flags = (False,) * num_layers
    if any(flags) and window is None:
        flags = (False,) * num_layers
    return (int(window) if any(flags) else None), flags


def _gemma_fields(fam: Family, cfg: dict) -> dict:
    def cap(key):
        value = cfg.get(key)
        return None if value is None else float(value)

    scalar = cfg.get("query_pre_attn_scalar")
    attn_cap = cap("attn_logit_softcapping") if fam.attn_softcap else None
    return dict(norm_offset=1.0, embed_scale=True, attn_softcap=attn_cap,
                final_softcap=cap("final_logit_softcapping"),
                query_scale=None if scalar is None else float(scalar) ** -0.5)


def spec_from_config(cfg: dict, where: str = "config.json") -> ModelSpec:
    """Validate an HF config dict and build its spec. `where` names the file in error messages."""
    archs = cfg.get("architectures") or []
    if not archs:
        raise ConfigError(f"{where}: no 'architectures' entry; supported: "
                          f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    arch = archs[0]
    fam = family_of(arch, where)
    for key, allowed in fam.unsupported_keys:
        if cfg.get(key, allowed) not in (allowed, None):
            raise ConfigError(f"{where}: {key}: {cfg[key]!r} is not supported for {arch}")
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
    act_key = next((k for k in fam.act_keys if cfg.get(k) is not None), fam.act_keys[0])
    act = cfg.get(act_key, "silu")
    if act not in SUPPORTED_ACTIVATIONS:
        raise ConfigError(f"{where}: {act_key} {act!r} is not supported "
                          f"({', '.join(SUPPORTED_ACTIVATIONS)})")
    if heads % spec_fields["num_kv_heads"]:
        raise ConfigError(f"{where}: num_attention_heads={heads} is not a multiple of "
                          f"num_key_value_heads={spec_fields['num_kv_heads']}")
    window, flags = _sliding_layers(fam, cfg, num_layers)
    if len(flags) != num_layers:
        raise ConfigError(f"{where}: layer_types has {len(flags)} entries for {num_layers} layers")
    rope, local_rope = _ropes(fam, cfg, where)
    if rope.kind == "longrope" and len(rope.short_factor) != spec_fields["head_dim"] // 2:
        raise ConfigError(f"{where}: rope short_factor has {len(rope.short_factor)} entries, "
                          f"expected head_dim / 2 = {spec_fields['head_dim'] // 2}")
    return ModelSpec(
        architecture=arch, hidden_size=hidden, num_layers=num_layers, num_heads=heads, rope=rope,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", fam.gemma)),
        hidden_act=act, layer_tensors=fam.tensors(cfg), sliding_window=window,
        sliding_layers=flags, family=fam.name, local_rope=local_rope, hf_renames=fam.hf_renames,
        fold_overrides=fam.fold_overrides, **(_gemma_fields(fam, cfg) if fam.gemma else {}),
        **spec_fields)


def config_with_num_layers(cfg: dict, spec: ModelSpec) -> dict:
    """An HF config dict describing `spec`'s layer count and per-layer attention types."""
    out = dict(cfg)
    out["num_hidden_layers"] = spec.num_layers
    if "layer_types" in cfg or any(spec.sliding_layers) or spec.local_rope is not None:
        out["layer_types"] = ["sliding_attention" if s else "full_attention"
                              for s in spec.sliding_layers]
    if "max_window_layers" in cfg:
        # layer_types is authoritative when present; keep the old key consistent for 4.x readers.
        first_sliding = next((i for i, s in enumerate(spec.sliding_layers) if s), spec.num_layers)
        out["max_window_layers"] = first_sliding
    return out
