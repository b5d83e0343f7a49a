"""Tiny seeded random models of the families beyond Llama (Gemma 2, Gemma 3 text, Phi-3,
Mixtral), built with transformers (the oracle) and saved with `save_pretrained`, as users'
checkpoints are (Mixtral's experts: per-expert w1/w2/w3, as transformers 5 saves them).

Each config exercises what changes the maths: soft-capping, sliding windows shorter than the
prompts (12 tokens), tied and untied heads, query_pre_attn_scalar, Gemma 3's local rope and linear
scaling, Phi-3's long-rope factors (an original context of 8 < 12 positions: the long factors are
used, as transformers switches to them), Mixtral's top-1 and top-2 routing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

_BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
_LAYERS3 = ["sliding_attention", "full_attention", "sliding_attention"]


def _long_rope(head_dim: int) -> dict:
    half = head_dim // 2
    return {"rope_type": "longrope", "rope_theta": 10000.0,
            "short_factor": [1.0 + 0.1 * i for i in range(half)],
            "long_factor": [1.0 + 0.7 * i for i in range(half)],
            "original_max_position_embeddings": 8}


# name -> (config class, overrides)
FAMILY_CONFIGS = {
    "gemma2_softcap": ("Gemma2Config", dict(
        sliding_window=4, query_pre_attn_scalar=12, attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0, tie_word_embeddings=True, layer_types=_LAYERS3)),
    "gemma2_untied": ("Gemma2Config", dict(
        sliding_window=4, query_pre_attn_scalar=8, attn_logit_softcapping=None,
        final_logit_softcapping=None, tie_word_embeddings=False, num_hidden_layers=2,
        layer_types=["full_attention", "sliding_attention"])),
    "gemma3_local_rope": ("Gemma3TextConfig", dict(
        sliding_window=4, query_pre_attn_scalar=8, tie_word_embeddings=True, layer_types=_LAYERS3,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                            "rope_theta": 100000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})),
    "gemma3_softcap_untied": ("Gemma3TextConfig", dict(
        sliding_window=5, query_pre_attn_scalar=16, tie_word_embeddings=False,
        attn_logit_softcapping=3.0, final_logit_softcapping=4.0, num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"])),
    "phi3_longrope": ("Phi3Config", dict(
        head_dim=None, max_position_embeddings=32, rope_parameters=_long_rope(8),
        original_max_position_embeddings=8, tie_word_embeddings=False, sliding_window=None)),
    "phi3_sliding_tied": ("Phi3Config", dict(
        head_dim=None, sliding_window=4, tie_word_embeddings=True)),
    # Mixtral: top-2 of 4 experts with a sliding window shorter than the prompts, untied; top-1
    # of 3, tied, no window.
    "mixtral_top2": ("MixtralConfig", dict(num_local_experts=4, num_experts_per_tok=2,
                                           num_hidden_layers=2, sliding_window=4)),
    "mixtral_top1": ("MixtralConfig", dict(num_local_experts=3, num_experts_per_tok=1,
                                           num_hidden_layers=2, tie_word_embeddings=True)),
}
GEMMA = ("gemma2_softcap", "gemma2_untied", "gemma3_local_rope", "gemma3_softcap_untied")


def make_family_model(name: str, seed: int = 0, **extra):
    """A random model; Gemma's norms are stored as `weight - 1`: theirs are perturbed around 0."""
    cls_name, overrides = FAMILY_CONFIGS[name]
    kwargs = {**_BASE, **overrides, **extra}
    if kwargs.get("head_dim") is None:
        kwargs.pop("head_dim")
    config = getattr(transformers, cls_name)(**kwargs)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    norm_center = 0.0 if name.startswith("gemma") else 1.0
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(norm_center + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def save_family_model(model, path: Path) -> Path:
    model.save_pretrained(path, safe_serialization=True)
    return path
