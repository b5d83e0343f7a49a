"""`evomerge merge` against mergekit 0.1.5 on the same YAML, tensor by tensor.

Tiny seeded Llama / Mistral / Qwen2 models (a base and perturbed variants, 4 layers). mergekit is a
black-box oracle: every case runs through it once, in one background subprocess that overlaps our
own runs (`evomerge_jax.cli.main`, in-process); float32 outputs must agree within 1e-5 and the
configs on num_hidden_layers and vocab_size. Random methods are checked for same-seed
reproducibility here; their statistics are tested with the methods.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import evomerge_jax as em
from evomerge_jax.cli import main
from evomerge_jax.merge import run as merge_run
from merge_models import config, make_family, max_abs_diff, start_mergekit, tensors

pytestmark = pytest.mark.slow  # about 3 minutes: mergekit subprocesses and ~40 merges

TOL = 1e-5
CLI_CASE = "ties_unnormalized_mistral_slices"  # also run through the `mergekit-yaml` command

# name -> YAML; {llama[base]} etc. are model dirs. Every deterministic method appears, with
# per-source, slice and top-level parameters, gradients, filters, slices and frankenmerges.
CASES = {
    "linear": """
merge_method: linear
models:
  - model: {llama[a]}
    parameters:
      weight:
        - filter: self_attn
          value: [0.1, 0.9]
        - value: 0.2
  - model: {llama[b]}
    parameters: {{weight: 0.5}}
  - model: {llama[c]}
parameters: {{weight: 0.3}}
dtype: float32
""",
    "linear_slices": """
merge_method: linear
parameters: {{normalize: false, weight: 0.5}}
slices:
  - sources:
      - model: {llama[a]}
        layer_range: [0, 3]
        parameters: {{weight: [0.0, 1.0]}}
      - model: {llama[b]}
        layer_range: [1, 4]
        parameters:
          weight:
            - filter: layers.2.
              value: 0.3
            - value: 0.8
  - sources:
      - model: {llama[a]}
        layer_range: [3, 4]
        parameters: {{weight: [0.2, 0.6]}}
      - model: {llama[b]}
        layer_range: [0, 1]
    parameters: {{weight: 0.25}}
dtype: float32
""",
    "slerp_filters": """
merge_method: slerp
base_model: {llama[base]}
models:
  - model: {llama[base]}
  - model: {llama[a]}
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.4
dtype: float32
""",
    "nuslerp": """
merge_method: nuslerp
base_model: {qwen2[base]}
models:
  - model: {qwen2[a]}
    parameters: {{weight: 0.3}}
  - model: {qwen2[b]}
    parameters: {{weight: [0.9, 0.2]}}
dtype: float32
""",
    "nuslerp_rows_no_base": """
merge_method: nuslerp
models:
  - model: {llama[a]}
    parameters: {{weight: 0.7}}
  - model: {llama[b]}
    parameters: {{weight: 0.4}}
parameters: {{nuslerp_flatten: false}}
dtype: float32
""",
    "multislerp": """
merge_method: multislerp
base_model: {llama[base]}
models:
  - model: {llama[a]}
    parameters: {{weight: 0.5}}
  - model: {llama[b]}
    parameters: {{weight: 0.3}}
  - model: {llama[c]}
    parameters: {{weight: [0.1, 0.6]}}
dtype: float32
""",
    "karcher": """
merge_method: karcher
models:
  - model: {llama[a]}
  - model: {llama[b]}
  - model: {llama[c]}
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: {qwen2[base]}
models:
  - model: {qwen2[a]}
    parameters: {{weight: [1.0, -0.5, 0.7]}}
  - model: {qwen2[b]}
    parameters: {{weight: 0.6}}
parameters:
  lambda:
    - filter: embed
      value: 0.5
    - value: 1.2
dtype: float32
""",
    "ties": """
merge_method: ties
base_model: {llama[base]}
models:
  - model: {llama[base]}
  - model: {llama[a]}
    parameters: {{weight: 0.6, density: [0.2, 0.9]}}
  - model: {llama[b]}
    parameters: {{weight: -0.4}}
  - model: {llama[c]}
    parameters:
      weight: 0.5
      density:
        - filter: mlp
          value: 0.3
parameters: {{density: 0.55}}
dtype: float32
""",
    "ties_unnormalized_mistral_slices": """
merge_method: ties
base_model: {mistral[base]}
parameters: {{weight: 0.7, density: 0.4, normalize: false, lambda: 0.9, int8_mask: true}}
slices:
  - sources:
      - model: {mistral[base]}
        layer_range: [0, 2]
      - model: {mistral[a]}
        layer_range: [2, 4]
      - model: {mistral[b]}
        layer_range: [1, 3]
  - sources:
      - model: {mistral[base]}
        layer_range: [2, 4]
      - model: {mistral[a]}
        layer_range: [0, 2]
      - model: {mistral[b]}
        layer_range: [2, 4]
    parameters: {{density: [0.1, 0.8]}}
dtype: float32
""",
    "breadcrumbs": """
merge_method: breadcrumbs
base_model: {llama[base]}
models:
  - model: {llama[a]}
    parameters: {{weight: 0.5, density: 0.8, gamma: 0.05}}
  - model: {llama[b]}
    parameters: {{weight: 0.5, density: 0.6}}
dtype: float32
""",
    "breadcrumbs_ties": """
merge_method: breadcrumbs_ties
base_model: {qwen2[base]}
models:
  - model: {qwen2[a]}
    parameters: {{weight: 0.5, density: 0.9, gamma: 0.02}}
  - model: {qwen2[b]}
    parameters: {{weight: 0.8, density: 0.7, gamma: 0.1}}
dtype: float32
""",
    "dare_ties_density_1": """
merge_method: dare_ties
base_model: {llama[base]}
models:
  - model: {llama[a]}
    parameters: {{weight: 0.5, density: 1.0}}
  - model: {llama[b]}
    parameters: {{weight: 0.8, density: 1.0}}
dtype: float32
""",
    "model_stock": """
merge_method: model_stock
base_model: {llama[base]}
models:
  - model: {llama[a]}
  - model: {llama[b]}
  - model: {llama[c]}
dtype: float32
""",
    "model_stock_filter_wise": """
merge_method: model_stock
base_model: {qwen2[base]}
models:
  - model: {qwen2[a]}
  - model: {qwen2[b]}
parameters: {{filter_wise: true}}
dtype: float32
""",
    "sce": """
merge_method: sce
base_model: {llama[base]}
models:
  - model: {llama[a]}
  - model: {llama[b]}
  - model: {llama[c]}
parameters: {{select_topk: 0.5}}
dtype: float32
""",
    "nearswap": """
merge_method: nearswap
base_model: {llama[base]}
models:
  - model: {llama[a]}
parameters: {{t: [0.001, 0.05]}}
dtype: float32
""",
    "arcee_fusion": """
merge_method: arcee_fusion
base_model: {llama[base]}
models:
  - model: {llama[a]}
dtype: float32
""",
    "ram": """
merge_method: ram
base_model: {llama[base]}
models:
  - model: {llama[a]}
  - model: {llama[b]}
parameters: {{epsilon: 0.02}}
dtype: float32
""",
    "ramplus_tl": """
merge_method: ramplus_tl
base_model: {llama[base]}
models:
  - model: {llama[a]}
  - model: {llama[b]}
parameters: {{epsilon: 0.02, r: 0.3, alpha: 0.5}}
dtype: float32
""",
    "passthrough_frankenmerge": """
merge_method: passthrough
slices:
  - sources:
      - model: {llama[a]}
        layer_range: [0, 3]
  - sources:
      - model: {llama[b]}
        layer_range: [1, 4]
        parameters:
          scale:
            - filter: o_proj
              value: [0.5, 1.0]
            - value: 1.0
  - sources:
      - model: {llama[a]}
        layer_range: [2, 3]
dtype: float32
""",
    "passthrough_mistral_out_bf16": """
merge_method: passthrough
slices:
  - sources:
      - model: {mistral[a]}
        layer_range: [0, 3]
  - sources:
      - model: {mistral[b]}
        layer_range: [1, 4]
dtype: float32
out_dtype: bfloat16
""",
}


@pytest.fixture(scope="module")
def families(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {"llama": make_family(root, "llama", seed=0),
            "mistral": make_family(root, "mistral_sliding", variants=2, seed=1),
            "qwen2": make_family(root, "qwen2_bias_sliding", variants=2, seed=2)}


@dataclass
class Oracle:
    root: Path
    procs: list

    def wait(self) -> Path:
        for proc in self.procs:
            if proc.returncode is None:
                proc.stderr_text = proc.communicate()[1].decode()
            assert proc.returncode == 0, proc.stderr_text[-2000:]
        return self.root


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, families):
    """Writes every case's config and starts mergekit on all of them in the background (plus the
    `mergekit-yaml` command on one); `wait()` before reading mergekit's outputs."""
    root = tmp_path_factory.mktemp("oracle")
    jobs = []
    for name, text in CASES.items():
        (root / f"{name}.yml").write_text(text.format(**families))
        jobs.append((root / f"{name}.yml", root / f"mergekit_{name}"))
    exe = Path(sys.executable).with_name("mergekit-yaml")
    procs = [start_mergekit(jobs), subprocess.Popen(
        [exe, root / f"{CLI_CASE}.yml", root / "mergekit_yaml_cli", "--no-lazy-unpickle",
         "--allow-crimes", "--no-copy-tokenizer", "--quiet"], stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)]

    return Oracle(root, procs)


def _ours(oracle, name):
    """`evomerge merge` on a case, once per module (cases are reused by several tests)."""
    out = oracle.root / f"evomerge_{name}"
    if not out.exists():
        assert main(["merge", str(oracle.root / f"{name}.yml"), str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_matches_mergekit(oracle, name):
    ours = _ours(oracle, name)
    root = oracle.wait()
    theirs = root / f"mergekit_{name}"
    error = root / f"mergekit_{name}.error"
    assert not error.exists(), error.read_text()
    diff, tensor = max_abs_diff(ours, theirs)
    # bfloat16 output: one rounding step of the largest values (|x| < 2) at most.
    assert diff <= (2.0 ** -7 if "bf16" in name else TOL), f"{name}: {tensor} differs by {diff}"
    for key in ("num_hidden_layers", "vocab_size"):
        assert config(ours)[key] == config(theirs)[key]
    assert (ours / "mergekit_config.yml").read_text() == (root / f"{name}.yml").read_text()


def test_mergekit_yaml_cli_agrees(oracle):
    """The `mergekit-yaml` command gives what its Python API gives (the oracle's own premise)."""
    root = oracle.wait()
    assert max_abs_diff(root / "mergekit_yaml_cli", root / f"mergekit_{CLI_CASE}")[0] == 0.0


@pytest.mark.parametrize("name", ["breadcrumbs", "sce", "dare_ties_density_1"])
def test_compiled_path_matches_mergekit(oracle, name, monkeypatch, tmp_path):
    """Large tensors merge as one jitted program; force it on the tiny models."""
    monkeypatch.setattr(merge_run, "_JIT_MIN_ELEMENTS", 0)
    assert main(["merge", str(oracle.root / f"{name}.yml"), str(tmp_path / "out"), "--quiet"]) == 0
    root = oracle.wait()
    diff, tensor = max_abs_diff(tmp_path / "out", root / f"mergekit_{name}")
    assert diff <= TOL, f"{name}: {tensor} differs by {diff}"


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear", "della", "della_linear"])
def test_random_methods_reproducible(families, tmp_path, method):
    text = f"""
merge_method: {method}
base_model: {families['llama']['base']}
models:
  - model: {families['llama']['a']}
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {families['llama']['b']}
    parameters: {{weight: 0.4, density: 0.3}}
dtype: float32
"""
    (tmp_path / "c.yml").write_text(text)
    for out, seed in (("one", "3"), ("two", "3"), ("other", "4")):
        assert main(["merge", str(tmp_path / "c.yml"), str(tmp_path / out), "--seed", seed,
                     "--quiet"]) == 0
    one, two, other = (tensors(tmp_path / n) for n in ("one", "two", "other"))
    name = "model.layers.1.mlp.up_proj.weight"
    assert all(np.array_equal(one[n], two[n]) for n in one)
    assert not np.array_equal(one[name], other[name])


def _hf_logits(path, tokens):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                              attn_implementation="eager")
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.mark.parametrize("name", ["ties", "passthrough_frankenmerge"])
def test_merged_dir_runs_in_transformers(oracle, name):
    """The merged dir loads in transformers, and the JAX decoder gives the same logits."""
    path = _ours(oracle, name)
    tokens = np.random.default_rng(0).integers(0, 97, size=(2, 9))
    ours = np.asarray(em.logits(em.load(path), tokens))
    np.testing.assert_allclose(ours, _hf_logits(path, tokens), atol=1e-4, rtol=0)


def test_sliding_frankenmerge_keeps_each_layers_attention(families, tmp_path):
    """Qwen2 with max_window_layers=1: layer 0 is full attention, the rest sliding. mergekit 0.1.5
    cannot write this config (transformers 5 rejects its stale layer_types), so the oracles are the
    source tensors themselves and transformers' logits."""
    qwen = families["qwen2"]
    (tmp_path / "c.yml").write_text(f"""
merge_method: passthrough
slices:
  - sources: [{{model: {qwen['a']}, layer_range: [1, 3]}}]
  - sources: [{{model: {qwen['b']}, layer_range: [0, 3]}}]
dtype: float32
""")
    out = tmp_path / "out"
    assert main(["merge", str(tmp_path / "c.yml"), str(out), "--quiet"]) == 0
    cfg = config(out)
    assert cfg["num_hidden_layers"] == 5
    assert cfg["layer_types"] == ["sliding_attention", "sliding_attention", "full_attention",
                                  "sliding_attention", "sliding_attention"]
    merged, a, b = tensors(out), tensors(qwen["a"]), tensors(qwen["b"])
    for out_layer, (src, layer) in enumerate([(a, 1), (a, 2), (b, 0), (b, 1), (b, 2)]):
        name = "self_attn.q_proj.bias"
        assert np.array_equal(merged[f"model.layers.{out_layer}.{name}"],
                              src[f"model.layers.{layer}.{name}"])
    assert np.array_equal(merged["model.embed_tokens.weight"], a["model.embed_tokens.weight"])
    assert np.array_equal(merged["lm_head.weight"], b["lm_head.weight"])
    tokens = np.random.default_rng(1).integers(0, 97, size=(2, 12))  # longer than the window
    ours = np.asarray(em.logits(em.load(out), tokens))
    np.testing.assert_allclose(ours, _hf_logits(out, tokens), atol=1e-4, rtol=0)
