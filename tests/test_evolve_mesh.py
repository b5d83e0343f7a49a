"""The (pop, model) device mesh: on 8 simulated CPU devices, every split of the population and of
the weights (8x1, 4x2, 2x4, 1x8) scores each candidate as one device does, holds the weights
split as mesh.py says, and exports the same tensors; `compute.mesh` picks and checks the sizes.

One subprocess (XLA_FLAGS must be set before JAX starts) loops over the meshes; it prints JSON
that the test compares with its own one-device results."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evolve_world import ppl_task, echo_task, write_config
from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.config_sections import MeshSection
from evomerge_jax.parallel.mesh import mesh_sizes, split_axis
from evomerge_jax.searches.run import prepare
from tiny_models import make_config

MESHES = ((8, 1), (4, 2), (2, 4), (1, 8))

_SCRIPT = """
import json, sys
import numpy as np, jax
from jax.sharding import PartitionSpec as P
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.parallel.mesh import MODEL, device_bytes, make_mesh
from evomerge_jax.parallel.seeds import candidate_keys
from evomerge_jax.searches.run import prepare
from evomerge_jax.dfs.export import fold_path
from evomerge_jax.dfs.path import decode_path
assert jax.device_count() == 8
ps_cfg, dfs_cfg, genomes_path, dfs_genomes_path = sys.argv[1:5]
meshes = json.loads(sys.argv[5])
out = {"ps": {}, "dfs": {}, "specs": {}, "bytes": {}, "fold": {}}

def scores(search, tasks, tokenizer, mesh, genomes):
    search.load(mesh)
    ev = Evaluator(search.model, search.weights, tasks, tokenizer, population=len(genomes),
                   mesh=mesh, log=lambda *_: None)
    rows = [t.fitness_rows(0, i, 1) for i, t in enumerate(tasks)]
    s = ev.fitness_scores(genomes, candidate_keys(0, 1, range(len(genomes))), rows)
    return {t: {m: np.asarray(v).tolist() for m, v in x.items()} for t, x in s.items()}

search, tasks, tokenizer, _ = prepare(load_config(ps_cfg))
genomes = np.load(genomes_path)
for pop, model in meshes:
    mesh = make_mesh(jax.devices()[:pop * model], pop, model)
    name = f"{pop}x{model}"
    out["ps"][name] = scores(search, tasks, tokenizer, mesh, genomes)
    w = search.weights
    out["specs"][name] = {k: list(w["sources"]["layers"][k].sharding.spec)
                          for k in ("q_proj", "k_proj", "o_proj", "gate_proj", "down_proj")}
    out["specs"][name]["embed"] = list(w["sources"]["embed"].sharding.spec)
    held = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(w))
    spec, shapes = search.weight_layout()
    out["bytes"][name] = [held, device_bytes(spec, shapes, model),
                          sum(x.nbytes for x in jax.tree.leaves(w))]

dsearch, dtasks, dtokenizer, _ = prepare(load_config(dfs_cfg))
dgenomes = np.load(dfs_genomes_path)
for pop, model in [(1, 1), (2, 4)]:
    mesh = make_mesh(jax.devices()[:pop * model], pop, model)
    name = f"{pop}x{model}"
    out["dfs"][name] = scores(dsearch, dtasks, dtokenizer, mesh, dgenomes)
    folded = fold_path(dsearch.stack, decode_path(dsearch.path_spec, dgenomes[0]))
    out["fold"][name] = {k: float(np.abs(np.asarray(v, np.float64)).sum())
                         for k, v in folded.params["layers"].items()}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def mesh_run(evolve_world, tmp_path_factory):
    """The subprocess's results over every mesh, with the 1x1 mesh run first as the reference."""
    root = tmp_path_factory.mktemp("mesh")
    # task_arithmetic compiles in a third of DARE-TIES's time; the split weights are the same.
    ps_cfg = write_config(root / "ps.yml", evolve_world,
                          [echo_task(evolve_world, batch_size=8), ppl_task(evolve_world)],
                          merge={"method": "task_arithmetic", "evolve": ["weight"]},
                          strategy={"population_size": 8, "generations": 1})
    dfs_cfg = write_config(root / "dfs.yml", evolve_world, [ppl_task(evolve_world, weight=1.0)],
                           search="dfs", strategy={"population_size": 4, "generations": 1},
                           output_dir=str(root / "dfs_run"))
    rng = np.random.default_rng(3)
    ps_dims = prepare(load_config(ps_cfg))[0].num_dims
    np.save(root / "g.npy", rng.uniform(0.1, 0.9, (8, ps_dims)).astype(np.float32))
    dfs = prepare(load_config(dfs_cfg))[0]
    paths = dfs.initial_mean() + 0.5 * rng.standard_normal((4, dfs.num_dims))
    np.save(root / "d.npy", paths.astype(np.float32))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    meshes = json.dumps([(1, 1), *MESHES])
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(ps_cfg), str(dfs_cfg),
                           str(root / "g.npy"), str(root / "d.npy"), meshes],
                          capture_output=True, text=True, env=env, timeout=300,
                          cwd=Path(__file__).parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("pop,model", MESHES)
def test_every_mesh_scores_like_one_device(mesh_run, pop, model):
    one, other = mesh_run["ps"]["1x1"], mesh_run["ps"][f"{pop}x{model}"]
    assert other["echo"]["acc"] == one["echo"]["acc"]
    np.testing.assert_allclose(other["ppl"]["nll"], one["ppl"]["nll"], rtol=1e-5)
    assert len(set(np.round(one["ppl"]["nll"], 4))) == 8  # the candidates do differ


@pytest.mark.slow
def test_weights_split_by_heads_units_and_hidden(mesh_run):
    """The tiny llama: 4 heads, 2 KV heads, 48 MLP units, vocab 97 (prime), hidden 32; stacked
    [L, K, out, in]. Heads split where the axis divides their count, else replicated; the
    vocabulary does not divide, so the embedding is split on hidden."""
    layer = lambda axis: [None, None] + [None] * axis + ["model"]  # noqa: E731
    specs = mesh_run["specs"]
    assert all(s == [] for s in specs["8x1"].values())
    assert specs["4x2"]["k_proj"] == layer(0) and specs["4x2"]["o_proj"] == layer(1)
    assert specs["2x4"]["q_proj"] == layer(0) and specs["2x4"]["k_proj"] == []
    assert specs["1x8"]["q_proj"] == []  # 4 heads on 8 devices
    assert specs["1x8"]["gate_proj"] == layer(0) and specs["1x8"]["down_proj"] == layer(1)
    assert specs["2x4"]["embed"] == [None, None, "model"]  # [K, V, D]: hidden
    for name, (held, planned, total) in mesh_run["bytes"].items():
        assert held == planned, name
    held = {name: b[0] for name, b in mesh_run["bytes"].items()}
    assert held["8x1"] == mesh_run["bytes"]["8x1"][2]  # a whole copy per device
    assert held["2x4"] < held["4x2"] < held["8x1"] and held["1x8"] < held["4x2"]


@pytest.mark.slow
def test_dfs_pass_and_export_on_a_split_stack(mesh_run):
    one, split = mesh_run["dfs"]["1x1"], mesh_run["dfs"]["2x4"]
    np.testing.assert_allclose(split["ppl"]["nll"], one["ppl"]["nll"], rtol=1e-5)
    assert mesh_run["fold"]["2x4"] == mesh_run["fold"]["1x1"]  # exported layers, gathered


def test_mesh_sizes():
    at = lambda m: 800 // m  # noqa: E731  (bytes of the weights per device)
    assert mesh_sizes("auto", 8, at, free=10_000) == (8, 1)
    assert mesh_sizes("auto", 8, at, free=800) == (4, 2)     # 400 <= half of 800
    assert mesh_sizes("auto", 8, at, free=250) == (1, 8)
    assert mesh_sizes(MeshSection(model=2), 8, at, free=1) == (4, 2)
    assert mesh_sizes(MeshSection(pop=2, model=4), 8, at, free=1) == (2, 4)
    with pytest.raises(ConfigError, match="pop 3 x model 2 = 6 devices, but 8"):
        mesh_sizes(MeshSection(pop=3, model=2), 8, at, free=1)


def test_split_axis_rules():
    from evomerge_jax.families import spec_from_config

    spec = spec_from_config({**make_config("llama", vocab_size=96).to_dict(),
                             "architectures": ["LlamaForCausalLM"]})
    assert split_axis(spec, "embed", 8) == 0       # vocabulary rows when they divide
    assert split_axis(spec, "lm_head", 4) == 0
    assert split_axis(spec, "v_proj", 2) == 0 and split_axis(spec, "v_proj", 4) is None
    assert split_axis(spec, "attn_norm", 2) is None and split_axis(spec, "q_proj", 1) is None
