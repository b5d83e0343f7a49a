"""Checkpoint I/O: round trips, sharding, transformers loading our output, atomic writes."""

import json

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

import evomerge_jax as em
from tiny_models import make_model, save_model


def _assert_params_equal(a, b):
    import jax
    la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in la] == [p for p, _ in lb]
    for (path, x), (_, y) in zip(la, lb):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        assert np.array_equal(np.asarray(x).view(np.uint8), np.asarray(y).view(np.uint8)), path


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_save_load_bit_exact(tmp_path, dtype):
    src = save_model(make_model("llama", seed=3), tmp_path / "src", dtype=dtype)
    ckpt = em.load(src)
    assert ckpt.params["embed"].dtype.name == str(dtype).removeprefix("torch.")
    assert ckpt.params["layers"]["q_proj"].shape == (3, 32, 32)
    em.save(ckpt, tmp_path / "out")
    _assert_params_equal(ckpt.params, em.load(tmp_path / "out").params)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["torch_dtype"] == str(dtype).removeprefix("torch.")


def test_tied_embeddings_have_no_lm_head(tiny_dirs, tmp_path):
    ckpt = em.load(tiny_dirs["qwen3_qknorm"][1])
    assert "lm_head" not in ckpt.params
    em.save(ckpt, tmp_path / "out")
    assert "lm_head.weight" not in load_file(tmp_path / "out" / "model.safetensors")


def test_sharded_save_loads_in_transformers(tiny_dirs, tmp_path):
    model, path = tiny_dirs["qwen2_bias_sliding"]
    ckpt = em.load(path)
    em.save(ckpt, tmp_path / "sharded", shard_size="20KB")
    files = sorted(p.name for p in (tmp_path / "sharded").glob("*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(files)
    _assert_params_equal(ckpt.params, em.load(tmp_path / "sharded").params)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "sharded", attn_implementation="eager")
    tokens = np.random.default_rng(0).integers(3, 97, size=(2, 9))
    with torch.no_grad():
        expected = theirs(torch.tensor(tokens)).logits.numpy()
    assert np.abs(np.asarray(em.logits(ckpt, tokens)) - expected).max() < 1e-4


def test_load_casts_dtype(tiny_dirs):
    ckpt = em.load(tiny_dirs["llama"][1], dtype="bfloat16")
    assert {x.dtype.name for x in ckpt.params["layers"].values()} == {"bfloat16"}


def test_tokenizer_and_generation_files_are_copied(tiny_dirs, tmp_path):
    from tokenizers import Tokenizer, models
    src = tmp_path / "with_tok"
    save_model(make_model("llama", seed=1), src)
    Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]")).save(str(src / "tokenizer.json"))
    em.save(em.load(src), tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    assert (tmp_path / "out" / "generation_config.json").is_file()


def test_existing_target_is_kept_unless_overwrite(tiny_dirs, tmp_path):
    ckpt = em.load(tiny_dirs["llama"][1])
    target = tmp_path / "out"
    target.mkdir()
    (target / "precious.txt").write_text("keep me")
    with pytest.raises(em.CheckpointError, match="already exists"):
        em.save(ckpt, target)
    assert (target / "precious.txt").read_text() == "keep me"
    em.save(ckpt, target, overwrite=True)
    assert not (target / "precious.txt").exists() and (target / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp dirs left behind


def test_failed_save_leaves_old_target(tiny_dirs, tmp_path, monkeypatch):
    ckpt = em.load(tiny_dirs["llama"][1])
    target = tmp_path / "out"
    em.save(ckpt, target)
    before = (target / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr("evomerge_jax.checkpoint.copy_tokenizer_files", boom)
    with pytest.raises(OSError):
        em.save(ckpt, target, overwrite=True)
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
