"""DFS on Gemma 2, Gemma 3 (text), Phi-3 and Mixtral: a path with negative and non-unit scales,
exported as a plain HF checkpoint (the family's fold, docs/design.md §4.1), run by transformers'
PyTorch model against the JAX path forward (searches that evolve and export:
test_families_evolve.py).

The norms' epsilon is the one approximation of every fold (§4); these models use eps = 1e-9 so
that what is checked here is the family's fold itself (post-norms, 1 + weight, embedding scale),
exact to float32 rounding."""

import numpy as np
import pytest
import torch
import transformers
from family_models import make_family_model, save_family_model

import evomerge_jax as em
from evomerge_jax import dfs

LAYERS = (0, 4, 1, 3, 5, 1, 2)    # A0, B1, A1, B0, B2, A1 again, A2 (the fixed end)
SCALES = (1.3, -0.7, 1.8, 0.5, -1.2, 0.9, 1.1)   # negative scales flip the norms' signs


@pytest.mark.parametrize("name", ["gemma2_softcap", "gemma3_local_rope", "phi3_longrope",
                                  "mixtral_top2"])
def test_family_export_matches_path_forward(tmp_path, name):
    ckpts = [em.load(save_family_model(make_family_model(name, seed, rms_norm_eps=1e-9,
                                                         num_hidden_layers=3),
                                       tmp_path / tag)) for tag, seed in (("a", 40), ("b", 41))]
    stack = dfs.stack_sources(ckpts, ["a", "b"])
    path = dfs.LayerPath(("a", "b"), (3, 3), LAYERS, SCALES)
    tokens = np.random.default_rng(0).integers(3, 97, size=(2, 12))
    ours = np.asarray(dfs.logits_of_path(stack, path, tokens))
    out = dfs.save_path_model(stack, path, tmp_path / "dfs_model")
    model = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    with torch.no_grad():
        theirs = model.eval()(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
    # the path is not the plain stack: the fold did something
    plain = np.asarray(em.logits(ckpts[0], tokens))
    assert np.abs(plain - theirs).max() > 1e-2
    want = ["sliding_attention" if stack.spec.sliding_layers[i] else "full_attention"
            for i in LAYERS]
    assert list(getattr(model.config, "layer_types", None) or want) == want
