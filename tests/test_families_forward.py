"""Gemma 2, Gemma 3 (text), Phi-3 and Mixtral against transformers: logits with padding on
either side, greedy generation, and the one-line errors of the variants the engine does not run."""

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
import torch
import transformers
from family_models import FAMILY_CONFIGS, make_family_model, save_family_model
from test_model_parity import _batch, _hf_logits

import evomerge_jax as em
from evomerge_jax.errors import CheckpointError
from evomerge_jax.parallel.memory_model import model_elements


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    out = {}
    for i, name in enumerate(FAMILY_CONFIGS):
        model = make_family_model(name, seed=10 + i)
        out[name] = (model, save_family_model(model, root / name))
    return out


@pytest.mark.parametrize("name", list(FAMILY_CONFIGS))
def test_logits_match_transformers(family_dirs, name):
    model, path = family_dirs[name]
    ckpt = em.load(path)
    for left in (True, False):
        tokens, mask = _batch(ckpt.spec.vocab_size, left=left)
        ours = np.asarray(em.logits(ckpt, tokens, mask))
        theirs = _hf_logits(model, tokens, mask)
        valid = mask.astype(bool)
        assert np.max(np.abs(ours[valid] - theirs[valid])) < 1e-4, (name, left)


# Each generation compiles a prefill and a step loop, so two configs: Gemma 3 (the Gemma decoder
# with local/global rope, sliding window 4 < 12 prompt tokens) and Phi-3 (long rope: its factors
# apply to the cached keys and every step).
@pytest.mark.parametrize("name", ["gemma3_local_rope", "phi3_longrope", "mixtral_top2"])
def test_greedy_generation_matches_transformers(family_dirs, name):
    model, path = family_dirs[name]
    ckpt = em.load(path)
    tokens, mask = _batch(ckpt.spec.vocab_size, seed=1, left=True)
    ours = em.generate(ckpt, tokens, 8, eos_token_id=None, attention_mask=mask)
    model.generation_config.eos_token_id = None
    with torch.no_grad():
        theirs = model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                                max_new_tokens=8, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_family_facts_reach_the_spec(family_dirs):
    """The config keys that change the maths are read, not defaulted (the parity above would not
    notice a key both sides ignore)."""
    spec = em.load(family_dirs["gemma2_softcap"][1]).spec
    assert (spec.norm_offset, spec.embed_scale, spec.attn_softcap, spec.final_softcap) == (
        1.0, True, 2.0, 3.0)
    assert spec.query_scale == pytest.approx(12 ** -0.5) and spec.sliding_layers == (
        True, False, True)
    g3 = em.load(family_dirs["gemma3_local_rope"][1]).spec
    assert (g3.rope.kind, g3.rope.factor, g3.local_rope.theta) == ("linear", 4.0, 50.0)
    phi = em.load(family_dirs["phi3_longrope"][1]).spec
    assert phi.rope.kind == "longrope" and phi.rope.attention_factor > 1.0


def _edited(path, tmp_path, **changes):
    out = tmp_path / "edited"
    out.mkdir()
    for item in path.iterdir():
        (out / item.name).write_bytes(item.read_bytes())
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("name,changes,key", [
    ("gemma3_local_rope", dict(architectures=["Gemma3ForConditionalGeneration"]), "architectures"),
    ("gemma3_local_rope", dict(use_bidirectional_attention=True), "use_bidirectional_attention"),
    ("phi3_longrope", dict(rope_parameters={"rope_type": "yarn", "factor": 2.0}), "rope type"),
    ("phi3_sliding_tied", dict(partial_rotary_factor=0.5), "partial_rotary_factor"),
    ("mixtral_top1", dict(num_experts_per_tok=4), "num_experts_per_tok"),
])
def test_unsupported_variants_fail_in_one_line(family_dirs, tmp_path, name, changes, key):
    path = _edited(family_dirs[name][1], tmp_path, **changes)
    with pytest.raises(CheckpointError) as err:
        em.load(path)
    assert key in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["gemma2_untied", "gemma3_local_rope", "phi3_longrope",
                                  "mixtral_top1"])
def test_planner_counts_every_parameter(family_dirs, name):
    """`evomerge plan`'s element count (fused qkv/gate_up, post-norms, q/k norms, tied heads)
    equals the PyTorch model's."""
    model, path = family_dirs[name]
    spec = em.load(path).spec
    assert model_elements(spec) == sum(p.numel() for p in model.parameters())


def test_mixtral_fused_layout_round_trips(family_dirs, tmp_path):
    """A checkpoint of per-expert w1/w2/w3 loads under the fused names; `save` writes the fused
    layout (transformers 5's and mergekit's), which transformers loads back to the same logits.
    An expert missing a tensor fails in one line naming it."""
    model, path = family_dirs["mixtral_top2"]
    ckpt = em.load(path)
    out = em.save(ckpt, tmp_path / "fused")
    with safe_open(out / "model.safetensors", "np") as f:
        assert f.get_slice("model.layers.1.mlp.experts.gate_up_proj").get_shape() == [4, 96, 32]
    again = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
    tokens, mask = _batch(ckpt.spec.vocab_size, left=True)
    valid = mask.astype(bool)
    theirs = _hf_logits(again.eval(), tokens, mask)
    assert np.max(np.abs(np.asarray(em.logits(em.load(out), tokens, mask))[valid]
                         - theirs[valid])) < 1e-4
    broken = _edited(path, tmp_path)
    with safe_open(path / "model.safetensors", "np") as f:
        kept = {k: f.get_tensor(k) for k in f.keys() if not k.endswith("experts.2.w3.weight")}
    save_file(kept, broken / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensor model\.layers\.0\.block_sparse_moe"
                       r"\.experts\.2\.w3\.weight$"):
        em.load(broken)
