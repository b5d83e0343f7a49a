"""`evomerge merge` on families the JAX forward does not support (GPT-2, Granite): tensors named
per layer are enough. Also the dtype rule with no `dtype` (each tensor's inputs promoted, as
mergekit 0.1.5 does) and with `dtype` + `out_dtype` (the result rounded to `dtype` first).
Oracles: numpy over the input files, transformers' config loader."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import evomerge_jax as em
from evomerge_jax.cli import main
from merge_models import tensors


def _save(config, path, seed):
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    config = transformers.GPT2Config(vocab_size=32, n_positions=32, n_embd=16, n_layer=3, n_head=2)
    return [_save(config, root / name, seed) for seed, name in enumerate("ab")]


@pytest.fixture(scope="module")
def granite(tmp_path_factory):
    root = tmp_path_factory.mktemp("granite")
    config = transformers.GraniteConfig(vocab_size=32, hidden_size=16, intermediate_size=16,
                                        num_attention_heads=2, num_hidden_layers=2)
    return [_save(config, root / name, seed) for seed, name in enumerate("ab")]


def _merge(tmp_path, text: str, capsys=None) -> tuple[int, str]:
    (tmp_path / "c.yml").write_text(text)
    code = main(["merge", str(tmp_path / "c.yml"), str(tmp_path / "out"), "--quiet"])
    return code, capsys.readouterr().err if capsys else ""


@pytest.mark.parametrize("family", ["gpt2", "granite"])
def test_linear_merge_of_a_family_without_forward(family, request, tmp_path):
    a, b = request.getfixturevalue(family)
    code, _ = _merge(tmp_path, f"merge_method: linear\nmodels:\n  - model: {a}\n    parameters: "
                               f"{{weight: 0.25}}\n  - model: {b}\n    parameters: {{weight: 0.75}}\n")
    assert code == 0
    ours, ta, tb = tensors(tmp_path / "out"), tensors(a), tensors(b)
    assert sorted(ours) == sorted(ta)
    for name in ta:
        np.testing.assert_allclose(ours[name], 0.25 * ta[name] + 0.75 * tb[name], rtol=1e-6,
                                   atol=1e-7)
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").architectures == \
        transformers.AutoConfig.from_pretrained(a).architectures


def test_gpt2_frankenmerge_counts_layers_under_n_layer(gpt2, tmp_path):
    a, b = gpt2
    code, _ = _merge(tmp_path, "merge_method: passthrough\nslices:\n"
                               f"  - sources: [{{model: {a}, layer_range: [0, 2]}}]\n"
                               f"  - sources: [{{model: {b}, layer_range: [1, 3]}}]\n")
    assert code == 0
    assert transformers.AutoConfig.from_pretrained(tmp_path / "out").n_layer == 4
    ours, ta, tb = tensors(tmp_path / "out"), tensors(a), tensors(b)
    np.testing.assert_array_equal(ours["transformer.h.3.attn.c_attn.weight"],
                                  tb["transformer.h.2.attn.c_attn.weight"])
    np.testing.assert_array_equal(ours["transformer.h.1.mlp.c_fc.bias"], ta["transformer.h.1.mlp.c_fc.bias"])
    np.testing.assert_array_equal(ours["transformer.wpe.weight"], ta["transformer.wpe.weight"])  # first slice
    np.testing.assert_array_equal(ours["transformer.ln_f.weight"], tb["transformer.ln_f.weight"])  # last


def test_forward_still_refuses_the_family(gpt2, capsys):
    with pytest.raises(em.CheckpointError, match="unsupported architecture 'GPT2LMHeadModel'"):
        em.load(gpt2[0])
    assert main(["info", str(gpt2[0])]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_inconsistent_layers_are_one_error_line(gpt2, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((gpt2[0] / "config.json").read_text())
    weights = load_file(gpt2[0] / "model.safetensors")
    del weights["transformer.h.1.attn.c_proj.bias"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    code, err = _merge(tmp_path, f"merge_method: passthrough\nmodels: [{{model: {broken}}}]\n",
                       capsys)
    assert code == 2 and err.count("\n") == 1
    assert re.search(r"^error: .*models\[0\] .*layer 1 holds other tensors than layer 0 "
                     r"\(-attn\.c_proj\.bias\)", err), err


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A bfloat16 checkpoint with float32 norms, and a float32 one (mergekit's
    test_yaml_mixed_checkpoint_precisions)."""
    root = tmp_path_factory.mktemp("mixed")
    config = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=16,
                                      num_attention_heads=2, num_hidden_layers=1)
    a, b = (_save(config, root / name, seed) for seed, name in enumerate("ab"))
    weights = load_file(a / "model.safetensors")
    save_file({n: t if "norm" in n else t.bfloat16() for n, t in weights.items()},
              a / "model.safetensors", metadata={"format": "pt"})
    return a, b


@pytest.mark.parametrize("dtypes", ["", "dtype: bfloat16\nout_dtype: float32\n"])
def test_mixed_precision_inputs(mixed, dtypes, tmp_path):
    a, b = mixed
    code, _ = _merge(tmp_path, f"merge_method: linear\nparameters: {{weight: 1.0}}\n"
                               f"models: [{{model: {a}}}, {{model: {b}}}]\n{dtypes}")
    assert code == 0
    ours = load_file(tmp_path / "out" / "model.safetensors")
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    for name, value in ours.items():
        assert value.dtype == torch.float32, name
        if dtypes:  # inputs and result rounded to bfloat16, then written as float32
            expected = ((ta[name].bfloat16().float() + tb[name].bfloat16().float()) / 2).bfloat16()
        else:  # bfloat16 + float32 promote to float32: the bfloat16 input is exact in it
            expected = (ta[name].float() + tb[name].float()) / 2
        torch.testing.assert_close(value, expected.float(), rtol=0, atol=0)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["torch_dtype"] == "float32"
