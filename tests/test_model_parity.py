"""The JAX decoder against transformers' PyTorch model: logits and greedy generation."""

import numpy as np
import pytest
import torch

import evomerge_jax as em
from tiny_models import FAMILIES


def _batch(vocab, seed=0, left=True):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(3, 12))
    mask = np.ones_like(tokens)
    # row 1: 4 pads, row 2: 7 pads, on the left or on the right
    for row, pads in ((1, 4), (2, 7)):
        if left:
            mask[row, :pads] = 0
        else:
            mask[row, -pads:] = 0
        tokens[row][mask[row] == 0] = 0
    return tokens, mask


def _hf_logits(model, tokens, mask):
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                    position_ids=torch.tensor(positions))
    return out.logits.numpy()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("left", [True, False], ids=["left_pad", "right_pad"])
def test_logits_match_transformers(tiny_dirs, family, left):
    model, path = tiny_dirs[family]
    ckpt = em.load(path)
    tokens, mask = _batch(ckpt.spec.vocab_size, left=left)
    ours = np.asarray(em.logits(ckpt, tokens, mask))
    theirs = _hf_logits(model, tokens, mask)
    valid = mask.astype(bool)
    assert np.max(np.abs(ours[valid] - theirs[valid])) < 1e-4
    # a padded row equals the same tokens run alone, unpadded
    alone = np.asarray(em.logits(ckpt, tokens[2][valid[2]][None]))[0]
    assert np.max(np.abs(ours[2][valid[2]] - alone)) < 1e-4


def test_sliding_window_changes_logits(tiny_dirs):
    """Guard against a mask that ignores the window: with window 4 over 12 tokens the last
    positions must differ from a full-attention run of the same weights."""
    model, path = tiny_dirs["mistral_sliding"]
    ckpt = em.load(path)
    full = em.Checkpoint(spec=ckpt.spec.with_num_layers((False,) * ckpt.spec.num_layers),
                         params=ckpt.params, config=ckpt.config)
    tokens, mask = _batch(ckpt.spec.vocab_size)
    diff = np.abs(np.asarray(em.logits(ckpt, tokens)) - np.asarray(em.logits(full, tokens)))
    assert diff[:, :4].max() < 1e-5 and diff[:, -1].max() > 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_greedy_generation_matches_transformers(tiny_dirs, family):
    model, path = tiny_dirs[family]
    ckpt = em.load(path)
    tokens, mask = _batch(ckpt.spec.vocab_size, seed=1, left=True)
    new = 10
    ours = em.generate(ckpt, tokens, new, eos_token_id=None, attention_mask=mask)
    model.generation_config.eos_token_id = None  # free-running: no EOS on either side
    with torch.no_grad():
        theirs = model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                                max_new_tokens=new, do_sample=False, pad_token_id=0).numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_generation_stops_at_eos(tiny_dirs):
    model, path = tiny_dirs["llama"]
    ckpt = em.load(path)
    tokens, mask = _batch(ckpt.spec.vocab_size, seed=2, left=True)
    free = em.generate(ckpt, tokens, 8, attention_mask=mask)
    eos = int(free[0, tokens.shape[1] + 2])  # make the third new token of row 0 an "EOS"
    out = em.generate(ckpt, tokens, 8, eos_token_id=[eos, 96], attention_mask=mask, pad_token_id=5)
    with torch.no_grad():
        theirs = model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                                max_new_tokens=8, do_sample=False, eos_token_id=[eos, 96],
                                pad_token_id=5).numpy()
    np.testing.assert_array_equal(out[:, :theirs.shape[1]], theirs)
    assert (out[0, tokens.shape[1] + 3:] == 5).all()
