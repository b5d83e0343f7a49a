"""Training the zoo's models with optax, through the engine's own differentiable `model.forward`.

The trained parameters are a small "core" pytree, not the HF layout: every L2 word's embedding is
its L1 counterpart's plus one learned language vector, in the input embedding and in the LM head
alike. docs/demo_world.md §6: this tie was the only thing that made a skill learned in one language
transfer to the other at this scale. `materialize` expands the core into the engine's layout
(`arch` docstring), the one a Hugging Face Llama dir holds, so the tie lives only in training:
merges and the search see ordinary, untied matrices.

Everything is float32 and deterministic given the PRNG key and the data arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..arch import ModelSpec
from ..families import spec_from_config
from ..model import forward
from . import world as w

N_SHARED = len(w.VOCAB) - len(w.L2_WORDS)  # specials, digits, punctuation, L1 words
_L1_START = len(w.SPECIALS) + len(w.DIGITS) + len(w.PUNCT)
# vocab id -> the core row it reads, and whether it is an L2 word (L2 ids follow the L1 block)
CORE_ROW = np.concatenate([np.arange(N_SHARED), _L1_START + np.arange(len(w.L2_WORDS))])
IS_L2 = np.arange(len(w.VOCAB)) >= N_SHARED


@dataclass(frozen=True)
class ModelShape:
    hidden: int = 96
    layers: int = 4
    heads: int = 4
    mlp: int = 256
    max_len: int = 64


def hf_config(shape: ModelShape) -> dict:
    """A transformers Llama config.json for the zoo's models."""
    ids = {t: w.VOCAB.index(t) for t in ("<pad>", "<bos>", "<eos>")}
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": len(w.VOCAB), "hidden_size": shape.hidden, "intermediate_size": shape.mlp,
        "num_hidden_layers": shape.layers, "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.heads, "head_dim": shape.hidden // shape.heads,
        "max_position_embeddings": shape.max_len, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False,
        "mlp_bias": False, "initializer_range": 0.02, "torch_dtype": "float32",
        "pad_token_id": ids["<pad>"], "bos_token_id": ids["<bos>"], "eos_token_id": ids["<eos>"],
    }


def init_core(spec: ModelSpec, key: jax.Array) -> dict:
    """Llama-style init (normal, std 0.02; norms at 1) of the core pytree."""
    keys = iter(jax.random.split(key, 4 + len(spec.layer_tensors)))
    normal = lambda shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    d = spec.hidden_size
    core = {"embed": normal((N_SHARED, d)), "lm_head": normal((N_SHARED, d)),
            "lang_in": normal((d,)), "lang_out": normal((d,)),
            "final_norm": jnp.ones((d,), jnp.float32), "layers": {}}
    for name in spec.layer_tensors:
        shape = (spec.num_layers,) + spec.layer_shape(name)
        core["layers"][name] = (jnp.ones(shape, jnp.float32) if name.endswith("norm")
                                else normal(shape))
    return core


def materialize(core: dict) -> dict:
    """Core pytree -> the engine's parameter pytree (untied [V, D] embedding and head)."""
    rows, is_l2 = jnp.asarray(CORE_ROW), jnp.asarray(IS_L2, jnp.float32)[:, None]
    return {"embed": core["embed"][rows] + is_l2 * core["lang_in"],
            "lm_head": core["lm_head"][rows] + is_l2 * core["lang_out"],
            "final_norm": core["final_norm"], "layers": core["layers"]}


def token_loss(core: dict, spec: ModelSpec, tokens_bs, mask_bs) -> jax.Array:
    """Mean cross-entropy of the tokens where `mask_bs` is 1, each predicted from its prefix."""
    logits = forward(materialize(core), spec, tokens_bs[:, :-1], (tokens_bs[:, :-1] != 0))
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_bs[:, 1:])
    weights = mask_bs[:, 1:]
    return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


# The learning rate is a traced hyperparameter, so every run of the same shapes reuses one
# compiled step whatever its schedule (compiling costs more than a short fine-tune here).
_OPTIMIZER = optax.chain(optax.clip_by_global_norm(1.0),
                         optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b2=0.98,
                                                               weight_decay=0.0))


@partial(jax.jit, static_argnames=("spec",))
def _step(core, opt_state, tokens, mask, lr, spec):
    loss, grads = jax.value_and_grad(token_loss)(core, spec, tokens, mask)
    opt_state[1].hyperparams["learning_rate"] = lr
    updates, opt_state = _OPTIMIZER.update(grads, opt_state, core)
    return optax.apply_updates(core, updates), opt_state, loss


@dataclass(frozen=True)
class Schedule:
    steps: int
    lr: float
    batch: int = 32
    warmup: int = 50


def train(core: dict, spec: ModelSpec, tokens: np.ndarray, mask: np.ndarray, sched: Schedule,
          seed: int, on_step=None) -> tuple[dict, list[float]]:
    """AdamW with linear warmup and cosine decay; batches drawn without replacement, epoch by
    epoch, in an order fixed by `seed`. Returns the trained core and the loss every 50 steps.
    `on_step()` is called after every step (a progress bar)."""
    lr = optax.warmup_cosine_decay_schedule(0.0, sched.lr, min(sched.warmup, sched.steps),
                                            max(sched.steps, sched.warmup + 1), sched.lr * 0.1)
    opt_state = _OPTIMIZER.init(core)
    rng = np.random.default_rng(seed)
    order = np.empty(0, np.int64)
    losses = []
    for step in range(sched.steps):
        if len(order) < sched.batch:
            order = np.concatenate([order, rng.permutation(len(tokens))])
        idx, order = order[: sched.batch], order[sched.batch:]
        core, opt_state, loss = _step(core, opt_state, jnp.asarray(tokens[idx]),
                                      jnp.asarray(mask[idx]), jnp.float32(lr(step)), spec)
        if step % 50 == 0 or step == sched.steps - 1:
            losses.append(float(loss))
        if on_step is not None:
            on_step()
    return core, losses


def spec_for(shape: ModelShape) -> ModelSpec:
    return spec_from_config(hf_config(shape))
