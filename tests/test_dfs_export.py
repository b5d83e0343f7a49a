"""A DFS path exported as a plain HF checkpoint, run by transformers' PyTorch model, against the
JAX path forward; the written files; and the norm-epsilon bound of the fold (docs/design.md §4).

The bound. The path normalises c·g with eps where the export normalises g with eps, so each of the
export's norms returns the path's normalised vector times a per-token factor 1 + δ with

    |δ| = |sqrt((m + eps/c²) / (m + eps)) - 1| <= eps·|1 - 1/c²| / (2·m),   m = mean(g²),

c the cumulative scale of that step (c_n for the final norm). To first order the logits' relative
error is at most Σ_norms γ·δ, with γ the gain of a relative change of one norm's output through
the rest of the network; we state γ = 3 (attention scores are bilinear in the normalised input,
the gated MLP is a product of two of its projections, the residual stream passes the change on).
"""

import json

import numpy as np
import pytest
import torch
import transformers

import evomerge_jax as em
from evomerge_jax import dfs
from tiny_models import make_model, save_model

GAIN = 3.0
LAYERS = (0, 4, 1, 3, 5, 1, 2)    # A0, B1, A1, B0, B2, A1 again, A2 (the fixed end)
SCALES = (1.3, -0.7, 1.8, 0.5, -1.2, 0.9, 1.1)   # negative scales flip the norms' signs


def _sources(root, family, embed_scale, eps):
    ckpts = []
    for name, seed in (("a", 30), ("b", 31)):
        model = make_model(family, seed, rms_norm_eps=eps)
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(embed_scale)
        ckpts.append(em.load(save_model(model, root / name)))
    return dfs.stack_sources(ckpts, ["a", "b"])


def _export_and_run(tmp_path, stack, path, tokens):
    out = dfs.save_path_model(stack, path, tmp_path / "dfs_model")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    model.eval()
    norms = [n for layer in model.model.layers
             for n in (layer.input_layernorm, layer.post_attention_layernorm)] + [model.model.norm]
    mean_sq = []
    hooks = [n.register_forward_hook(lambda mod, args, _: mean_sq.append(
        args[0].double().pow(2).mean(-1).numpy())) for n in norms]
    with torch.no_grad():
        theirs = model(torch.tensor(np.asarray(tokens))).logits.numpy()
    for h in hooks:
        h.remove()
    return out, model, norms, mean_sq, theirs


def _bound(path, mean_sq, eps):
    """γ·Σ over every norm of max_token eps·|1 - 1/c²| / (2m) (see the module docstring)."""
    c = path.cumulative_scales()
    c_norms = list(np.repeat(c, 2)) + [c[-1]]   # two norms per step, then the final norm
    return GAIN * sum(float(np.max(eps * abs(1 - 1 / ck**2) / (2 * m)))
                      for m, ck in zip(mean_sq, c_norms))


def _token_rel(x, y):
    return float(np.max(np.linalg.norm(x - y, axis=-1) / np.linalg.norm(y, axis=-1)))


@pytest.mark.parametrize("family", ["llama_llama3_rope_bias", "qwen2_bias_sliding", "qwen3_qknorm"])
def test_export_matches_transformers(tmp_path, family):
    """Realistic hidden states (A's embeddings ×30): the fold is exact to float32 rounding."""
    eps = 1e-5
    stack = _sources(tmp_path, family, embed_scale=30.0, eps=eps)
    path = dfs.LayerPath(("a", "b"), (3, 3), LAYERS, SCALES)
    tokens = np.random.default_rng(0).integers(3, 97, size=(2, 9))
    ours = np.asarray(dfs.logits_of_path(stack, path, tokens))
    out, model, _, mean_sq, theirs = _export_and_run(tmp_path, stack, path, tokens)
    bound = _bound(path, mean_sq, eps)
    assert bound < 1e-5, "hidden states are not at a realistic scale"
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
    assert _token_rel(ours, theirs) < max(bound, 1e-6)

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 7 and model.config.num_hidden_layers == 7
    flags = stack.spec.sliding_layers
    want_types = ["sliding_attention" if flags[i] else "full_attention" for i in LAYERS]
    assert list(getattr(model.config, "layer_types", None) or want_types) == want_types
    assert dfs.LayerPath.from_json((out / "path.json").read_text()) == path
    assert (out / "path.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_eps_bound_where_it_matters(tmp_path):
    """Small hidden states (mean(h²) ≈ 0.02) with a large eps (1e-3): the export measurably
    differs from the path, by no more than the stated bound; and with each step's norms set to
    eps/c² (the exact equivalent) transformers agrees with the path again."""
    eps = 1e-3
    stack = _sources(tmp_path, "llama", embed_scale=1.0, eps=eps)
    path = dfs.LayerPath(("a", "b"), (3, 3), LAYERS, SCALES)
    tokens = np.random.default_rng(1).integers(3, 97, size=(2, 9))
    ours = np.asarray(dfs.logits_of_path(stack, path, tokens))
    _, model, norms, mean_sq, theirs = _export_and_run(tmp_path, stack, path, tokens)
    bound = _bound(path, mean_sq, eps)
    diff = _token_rel(ours, theirs)
    assert diff > 1e-3, "the epsilon should matter here"
    assert diff <= bound

    c = path.cumulative_scales()
    for norm, ck in zip(norms, list(np.repeat(c, 2)) + [c[-1]]):
        norm.variance_epsilon = eps / ck**2
    with torch.no_grad():
        exact = model(torch.tensor(tokens)).logits.numpy()
    assert _token_rel(ours, exact) < 1e-5

    zero = dfs.LayerPath(("a", "b"), (3, 3), (0, 4, 2), (1.0, 0.0, 1.0))
    with pytest.raises(em.ConfigError, match="step 1 has a zero cumulative scale"):
        dfs.save_path_model(stack, zero, tmp_path / "zero")
    assert not (tmp_path / "zero").exists()
