"""Each bad input gives one error of the EvomergeError family naming the file and the problem,
and the CLI turns it into one line on stderr with exit code 2."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import evomerge_jax as em
from evomerge_jax.cli import main


@pytest.fixture
def model_dir(tiny_dirs, tmp_path):
    path = tmp_path / "model"
    shutil.copytree(tiny_dirs["llama"][1], path)
    return path


def _rewrite_tensors(path, edit):
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


CASES = {
    "missing_dir": (lambda p: shutil.rmtree(p), "no such model directory"),
    "not_a_dir": (lambda p: (shutil.rmtree(p), p.write_text("x")), "not a directory"),
    "no_config": (lambda p: (p / "config.json").unlink(), "no config.json"),
    "bad_json": (lambda p: (p / "config.json").write_text("{oops"), "cannot read JSON"),
    "unsupported_arch": (lambda p: _edit_config(p, architectures=["GPT2LMHeadModel"]),
                         "unsupported architecture 'GPT2LMHeadModel'; supported: LlamaForCausalLM"),
    "no_weights": (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
    "truncated": (lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:5000]), "corrupt or truncated"),
    "garbage": (lambda p: (p / "model.safetensors").write_bytes(b"\x10" * 64), "corrupt or truncated"),
    "missing_tensor": (lambda p: _rewrite_tensors(
        p, lambda t: t.pop("model.layers.1.mlp.up_proj.weight")),
        "missing tensor 'model.layers.1.mlp.up_proj.weight'"),
    "wrong_shape": (lambda p: _rewrite_tensors(
        p, lambda t: t.update({"model.norm.weight": np.ones(31, np.float32)})),
        r"tensor 'model.norm.weight' has shape \[31\], expected \[32\]"),
    "unexpected_tensor": (lambda p: _rewrite_tensors(
        p, lambda t: t.update({"model.layers.0.extra.weight": np.ones(3, np.float32)})),
        "unexpected tensor 'model.layers.0.extra.weight'"),
    "bad_dtype": (lambda p: _rewrite_tensors(
        p, lambda t: t.update({"model.norm.weight": np.ones(32, np.int8)})),
        "tensor 'model.norm.weight' has dtype I8"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_model_dir(model_dir, case, capsys):
    breaker, message = CASES[case]
    breaker(model_dir)
    with pytest.raises(em.CheckpointError, match=message):
        em.load(model_dir)
    assert main(["info", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(model_dir) in err


def test_cli_subprocess_has_no_traceback(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "evomerge_jax.cli", "info", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr == f"error: {tmp_path / 'nope'}: no such model directory\n"
