"""The PS population pass against independent evaluations: each candidate's score equals the score
of its exported HF dir run through the plain decoder; chunking and device count change nothing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evolve_world import POPULATION, standard_config
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.parallel.memory_model import shape_of, workloads
from evomerge_jax.ps.genome import make_layout
from evomerge_jax.parallel.seeds import candidate_keys
from evomerge_jax.searches.run import prepare, score_model


@pytest.fixture(scope="module")
def eight_devices(evolve_world, tmp_path_factory):
    """The 8-simulated-device run, started in the background first so that it overlaps the
    in-process tests; returns (genomes, the subprocess)."""
    root = tmp_path_factory.mktemp("eight")
    cfg = standard_config(evolve_world, root / "cfg.yml")
    dims = make_layout(load_config(cfg), num_sources=2, num_layers=3).num_dims
    genomes = np.random.default_rng(2).uniform(0.1, 0.9, (POPULATION, dims)).astype(np.float32)
    np.save(root / "genomes.npy", genomes)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", _EIGHT_DEVICES, str(cfg),
                             str(root / "genomes.npy")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent)
    yield genomes, proc
    proc.kill()


@pytest.fixture(scope="module")
def engine(eight_devices, evolve_world, tmp_path_factory):
    cfg = load_config(standard_config(evolve_world, tmp_path_factory.mktemp("pop") / "cfg.yml"))
    search, tasks, tokenizer, _ = prepare(cfg)
    search.load()
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=POPULATION)
    return search, tasks, tokenizer, evaluator


def _genomes(search, n, seed=0):
    return np.random.default_rng(seed).uniform(0.1, 0.9, (n, search.num_dims)).astype(np.float32)


def test_pass_score_equals_exported_model(engine, tmp_path):
    """DARE-TIES candidates: the score in the pass (P candidates, merged in the layer scan) equals
    the score of the exported dir evaluated by the plain decoder, and the masks matter."""
    search, tasks, tokenizer, evaluator = engine
    genomes, keys = _genomes(search, 2), candidate_keys(0, 5, range(2))
    for c in range(2):
        inside = evaluator.split_scores(genomes[c:c + 1], keys[c:c + 1], "validation")
        out = search.export(genomes[c], keys[c], tmp_path / f"cand{c}")
        alone = score_model(out, tasks, tokenizer, ["validation"])["validation"]
        assert inside["echo"]["acc"][0] == alone["echo"]["acc"]
        assert abs(inside["ppl"]["nll"][0] - alone["ppl"]["nll"]) < 1e-5
    other_key = candidate_keys(0, 6, [0])
    moved = evaluator.split_scores(genomes[:1], other_key, "validation")["ppl"]["nll"][0]
    assert abs(moved - inside_nll(evaluator, genomes[:1], keys[:1])) > 1e-4


def inside_nll(evaluator, genomes, keys):
    return evaluator.split_scores(genomes, keys, "validation")["ppl"]["nll"][0]


def test_memory_budget_splits_population(engine):
    search, tasks, tokenizer, evaluator = engine
    work = workloads(shape_of(t) for t in tasks)  # the weights, the layer merging and its step
    fixed = evaluator.resident + search.model.fixed_memory(1, work)
    small = Evaluator(search.model, search.weights, tasks, tokenizer, population=POPULATION,
                      memory_budget=str(fixed + int(1.5 * evaluator.per_candidate)))
    assert small.chunk == 1 and evaluator.chunk == POPULATION
    assert Evaluator(search.model, search.weights, tasks, tokenizer, population=POPULATION,
                     memory_budget=str(fixed + 4 * evaluator.per_candidate)).chunk == 3
    genomes, keys = _genomes(search, POPULATION, 1), candidate_keys(0, 1, range(POPULATION))
    rows = [t.fitness_rows(0, i, 1) for i, t in enumerate(tasks)]
    whole = evaluator.fitness_scores(genomes, keys, rows)
    chunked = small.fitness_scores(genomes, keys, rows)
    np.testing.assert_array_equal(whole["echo"]["acc"], chunked["echo"]["acc"])
    np.testing.assert_allclose(whole["ppl"]["nll"], chunked["ppl"]["nll"], rtol=1e-6)


_EIGHT_DEVICES = """
import json, sys
import numpy as np, jax
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.parallel.memory_model import shape_of, workloads
from evomerge_jax.ps.genome import make_layout
from evomerge_jax.parallel.seeds import candidate_keys
from evomerge_jax.searches.run import prepare
assert jax.device_count() == 8
search, tasks, tokenizer, _ = prepare(load_config(sys.argv[1]))
search.load()
evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=8)
genomes = np.load(sys.argv[2])
rows = [t.fitness_rows(0, i, 1) for i, t in enumerate(tasks)]
scores = evaluator.fitness_scores(genomes, candidate_keys(0, 1, range(len(genomes))), rows)
print(json.dumps({t: {m: v.tolist() for m, v in s.items()} for t, s in scores.items()}))
"""


def test_one_device_equals_eight(engine, eight_devices):
    search, tasks, _, evaluator = engine
    genomes, proc = eight_devices
    assert genomes.shape[1] == search.num_dims
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    eight = json.loads(out.strip().splitlines()[-1])
    rows = [t.fitness_rows(0, i, 1) for i, t in enumerate(tasks)]
    one = evaluator.fitness_scores(genomes, candidate_keys(0, 1, range(POPULATION)), rows)
    assert evaluator.n_dev == 1
    np.testing.assert_array_equal(one["echo"]["acc"], eight["echo"]["acc"])
    np.testing.assert_allclose(one["ppl"]["nll"], eight["ppl"]["nll"], rtol=1e-6)


def test_generation_in_the_pass_equals_the_exported_models(evolve_world, tmp_path):
    """Free greedy generation for a population (layers re-merged at every step, KV cache per
    candidate) gives each candidate's exported model's own greedy tokens."""
    import jax.numpy as jnp

    from evomerge_jax import api, checkpoint
    from evomerge_jax.evolve.evaluate import population_pass
    from evomerge_jax.evolve.metrics import Generation

    cfg = load_config(standard_config(evolve_world, tmp_path / "cfg.yml",
                                      merge={"method": "task_arithmetic", "evolve": ["weight"]}))
    search, tasks, _, _ = prepare(cfg)
    search.load()
    evaluator = Evaluator(search.model, search.weights, tasks, None, population=2)
    genomes, keys = _genomes(search, 2, 3), candidate_keys(0, 0, range(2))
    prompts = tasks[0].splits["test"].arrays
    width = prompts["mask"].shape[1]
    tokens = np.zeros((4, width), np.int32)
    mask = np.zeros((4, width), np.int32)
    for i in range(4):  # left-pad the first four prompts of the echo test split
        row = prompts["tokens"][i][prompts["mask"][i] == 1]
        tokens[i, width - len(row):], mask[i, width - len(row):] = row, 1
    batch = {"teacher": None, "generate": ({"tokens": jnp.asarray(tokens),
                                            "mask": jnp.asarray(mask)},)}
    _, (generated,) = population_pass(evaluator.model, (Generation(5, (), 0),), evaluator.mesh,
                                      evaluator.weights, jnp.asarray(genomes), jnp.asarray(keys),
                                      batch)
    for c in range(2):
        ckpt = checkpoint.load(search.export(genomes[c], keys[c], tmp_path / f"c{c}"))
        alone = api.generate(ckpt, tokens, 5, attention_mask=mask)[:, width:]
        np.testing.assert_array_equal(np.asarray(generated[c]), alone)
