"""The real model in the merge and DFS paths: SmolLM2-135M-Instruct (tests/smollm2.py).

- `evomerge merge` against mergekit 0.1.5 (the oracle, one background subprocess that overlaps
  our merges): a passthrough frankenmerge of SmolLM2's own layers, and a SLERP (with a per-layer
  gradient) of SmolLM2's first 4 layers with a perturbed 4-layer copy; float32 tensors within
  1e-5 and the same layer count.
- A DFS self-merge (a path through SmolLM2's layers twice, with scales) exported as an HF dir:
  transformers loads it and its logits match the engine's DFS path forward.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import evomerge_jax as em
from evomerge_jax import dfs
from evomerge_jax.cli import main
from merge_models import config, max_abs_diff, start_mergekit

TOL = 1e-5
COPY_LAYERS = 4

CONFIGS = {
    "passthrough": """
merge_method: passthrough
slices:
  - sources: [{{model: {smol}, layer_range: [0, 4]}}]
  - sources: [{{model: {smol}, layer_range: [2, 6]}}]
  - sources: [{{model: {smol}, layer_range: [28, 30]}}]
dtype: float32
""",
    "slerp": """
merge_method: slerp
base_model: {smol}
slices:
  - sources:
      - {{model: {smol}, layer_range: [0, 4]}}
      - {{model: {copy}, layer_range: [0, 4]}}
parameters:
  t:
    - filter: self_attn
      value: [0.1, 0.7, 0.3]
    - value: 0.6
dtype: float32
""",
}


def _perturbed_copy(smol, out):
    """SmolLM2's first COPY_LAYERS layers, every tensor moved by 2% of its std (seeded)."""
    out.mkdir()
    rng = np.random.default_rng(7)
    tensors = {}
    for name, value in load_file(smol / "model.safetensors").items():
        if ".layers." in name and int(name.split(".layers.")[1].split(".")[0]) >= COPY_LAYERS:
            continue
        noise = rng.standard_normal(value.shape, dtype=np.float32)
        tensors[name] = (value + 0.02 * value.std() * noise).astype(np.float32)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((smol / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": COPY_LAYERS}))
    for f in smol.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def merges(smollm2, tmp_path_factory):
    """Each config merged by mergekit (background) and by evomerge: name -> (ours, theirs)."""
    root = tmp_path_factory.mktemp("smol_merges")
    copy = _perturbed_copy(smollm2, root / "copy")
    jobs, out = [], {}
    for name, text in CONFIGS.items():
        path = root / f"{name}.yml"
        path.write_text(text.format(smol=smollm2, copy=copy))
        out[name] = (path, root / f"{name}_ours", root / f"{name}_theirs")
        jobs.append((path, out[name][2]))
    proc = start_mergekit(jobs)
    for path, ours, _ in out.values():
        assert main(["merge", str(path), str(ours), "--quiet"]) == 0
    _, err = proc.communicate()
    assert proc.returncode == 0, err.decode()[-2000:]
    return {name: (ours, theirs) for name, (_, ours, theirs) in out.items()}


@pytest.mark.parametrize("name,layers", [("passthrough", 10), ("slerp", 4)])
def test_merge_matches_mergekit(merges, name, layers):
    ours, theirs = merges[name]
    diff, tensor = max_abs_diff(ours, theirs)
    assert diff <= TOL, (name, tensor, diff)
    assert config(ours)["num_hidden_layers"] == config(theirs)["num_hidden_layers"] == layers


def test_dfs_self_merge_exports_to_transformers(smollm2, tmp_path):
    """A path through SmolLM2's layers as A and again as B (A0-A5, B3-B8, then A's final norm:
    layers 3-5 run twice), scaled at the seam and with a sign flip; transformers runs the export
    as the path forward runs the stack."""
    ckpt = em.load(smollm2)
    stack = dfs.stack_sources([ckpt, ckpt], ["a", "b"])
    n = ckpt.spec.num_layers
    layers = tuple(range(6)) + tuple(n + i for i in range(3, 9))
    scales = tuple(0.8 if i == 6 else -1.0 if i == 9 else 1.0 for i in range(len(layers)))
    path = dfs.LayerPath(("a", "b"), (n, n), layers, scales)
    tokens = np.asarray([[1, 9690, 2683, 28, 2, 314, 4849, 260, 1812, 30]])
    ours = np.asarray(dfs.logits_of_path(stack, path, tokens))
    out = dfs.save_path_model(stack, path, tmp_path / "dfs")
    del stack, ckpt
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_hidden_layers == len(layers) == 12
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    assert np.abs(ours - theirs).max() / np.abs(theirs).max() < 1e-4
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()
