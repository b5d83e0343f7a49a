"""Tiny seeded random models built with transformers, one per family and config feature.

transformers (with torch) is the oracle: these dirs are written by `save_pretrained`, exactly as a
user's checkpoints are.
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

BASE = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)

# name -> (config class, overrides); every feature that changes the maths appears at least once.
FAMILIES = {
    "llama": ("LlamaConfig", {}),
    "llama_llama3_rope_bias": ("LlamaConfig", dict(
        head_dim=16, attention_bias=True, mlp_bias=True, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama_linear_rope_tied": ("LlamaConfig", dict(
        tie_word_embeddings=True, rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "mistral_sliding": ("MistralConfig", dict(sliding_window=4)),
    "qwen2_bias_sliding": ("Qwen2Config", dict(use_sliding_window=True, sliding_window=4,
                                               max_window_layers=1)),
    "qwen3_qknorm": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True,
                                         num_key_value_heads=1)),
}


def make_config(family: str, **overrides):
    cls_name, family_overrides = FAMILIES[family]
    kwargs = {**BASE, **family_overrides, **overrides}
    return getattr(transformers, cls_name)(**kwargs)


def make_model(family: str, seed: int = 0, **overrides):
    """A random model whose norms and biases are perturbed too, so that every tensor matters."""
    config = make_config(family, **overrides)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.eval()


def save_model(model, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    model.to(dtype).save_pretrained(path, safe_serialization=True)
    model.to(torch.float32)
    return path
