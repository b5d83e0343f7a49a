"""Any merge method in the PS genome (issue 16, item 4): for linear, slerp (t per layer), nuslerp,
multislerp and sce, the exported model equals what mergekit 0.1.5 (the oracle, a black box)
builds from the exported recipe.yaml, to float32 rounding; the population pass scores what export
writes; methods the genome cannot hold are one-line config errors."""

import numpy as np
import pytest

from evolve_world import echo_task, ppl_task, write_config
from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve.config import load_config
from evomerge_jax.ps.export import recipe_yaml
from evomerge_jax.ps.search import PSSearch, check_models
from merge_models import start_mergekit, tensors

CASES = {  # name: (sections, number of sources)
    "linear_per_layer": (dict(merge={"method": "linear", "evolve": ["weight"]},
                              grouping={"layers": "per_layer", "globals": "own"}), 2),
    "slerp_t_per_layer": (dict(merge={"method": "slerp", "evolve": ["t"]},
                               grouping={"layers": "per_layer", "globals": "nearest"}), 1),
    "nuslerp_sides": (dict(merge={"method": "nuslerp", "evolve": ["weight"]},
                           grouping={"layers": "all", "split_attn_mlp": True, "globals": "own"}),
                      2),
    "multislerp_groups": (dict(merge={"method": "multislerp", "evolve": ["weight"]},
                               grouping={"layers": 2, "globals": "own"}), 2),
    "sce_topk": (dict(merge={"method": "sce", "evolve": ["select_topk"]},
                      grouping={"layers": "per_layer", "globals": "nearest"}), 2),
}


def test_recipe_of_each_method_reproduces_export_in_mergekit(evolve_world, tmp_path):
    searches, jobs, exports = {}, [], {}
    for i, (name, (sections, count)) in enumerate(CASES.items()):
        path = write_config(tmp_path / f"{name}.yml", evolve_world, [echo_task(evolve_world)],
                            models=[str(p) for p in evolve_world["sources"][:count]], **sections)
        cfg = load_config(path)
        spec, hf_config = check_models(cfg)
        search = PSSearch(cfg, spec, hf_config)
        genome = np.random.default_rng(i).uniform(0.05, 0.95, search.num_dims)
        searches[name] = (search, genome)
        (tmp_path / f"{name}_recipe.yaml").write_text(recipe_yaml(search, genome))
        jobs.append((tmp_path / f"{name}_recipe.yaml", tmp_path / f"mergekit_{name}"))
    oracle = start_mergekit(jobs)  # in the background while we export
    for name, (search, genome) in searches.items():
        exports[name] = search.export(genome, np.zeros(2, np.uint32), tmp_path / f"ours_{name}")
    oracle.communicate(timeout=600)
    worst = {}
    for name in CASES:
        error = tmp_path / f"mergekit_{name}.error"
        assert not error.exists(), error.read_text()
        ours, theirs = tensors(exports[name]), tensors(tmp_path / f"mergekit_{name}")
        assert sorted(ours) == sorted(theirs)
        worst[name] = max(float(np.abs(ours[t] - theirs[t]).max()) for t in ours)
        sources = [tensors(p) for p in evolve_world["sources"][:CASES[name][1]]]
        moved = max(float(np.abs(ours[t] - sources[0][t]).max()) for t in ours)
        assert moved > 1e-3, name  # the merge is not a copy of a source
    assert max(worst.values()) <= 1e-5, worst


@pytest.mark.parametrize("merge, models, message", [
    ({"method": "model_stock", "evolve": ["weight"]}, 2, "no numeric parameter to evolve"),
    ({"method": "karcher", "evolve": ["tol"]}, 2, "no numeric parameter to evolve"),
    ({"method": "slerp", "evolve": ["t"]}, 2, "takes exactly 1 model"),
    ({"method": "nearswap", "evolve": ["t"]}, 1, "cannot be evolved"),
    ({"method": "linear", "evolve": ["density"]}, 2, "has no parameter 'density' to evolve"),
    ({"method": "linear", "evolve": ["weight"], "rescale_rule": "inverse_density"}, 2,
     "rescale_rule applies to DARE/DELLA"),
    ({"method": "multislerp", "evolve": ["eps"]}, 2, "has no parameter 'eps' to evolve"),
])
def test_methods_the_genome_cannot_hold_are_config_errors(evolve_world, tmp_path, merge, models,
                                                          message):
    path = write_config(tmp_path / "c.yml", evolve_world, [echo_task(evolve_world)],
                        models=[str(p) for p in evolve_world["sources"][:models]], merge=merge)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_population_pass_scores_what_export_writes(evolve_world, tmp_path):
    """slerp with t per layer: the pass's score of a candidate equals the exported model's."""
    from evomerge_jax.evolve.evaluate import Evaluator
    from evomerge_jax.ps.search import prepare_ps
    from evomerge_jax.searches.stage import score_model

    sections, count = CASES["slerp_t_per_layer"]
    path = write_config(tmp_path / "c.yml", evolve_world, [ppl_task(evolve_world)],
                        models=[str(p) for p in evolve_world["sources"][:count]], **sections)
    search, tasks, tokenizer, _ = prepare_ps(load_config(path), log=lambda *_: None)
    search.load()
    genomes = np.random.default_rng(5).uniform(0.05, 0.95, (3, search.num_dims)).astype(np.float32)
    keys = np.zeros((3, 2), np.uint32)
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=3)
    nll = np.asarray(evaluator.split_scores(genomes, keys, "test")["ppl"]["nll"], np.float64)
    assert np.ptp(nll) > 1e-4  # the candidates differ
    out = search.export(genomes[1], keys[1], tmp_path / "exported")
    exported = score_model(out, tasks, tokenizer, ("test",))["test"]["ppl"]["nll"]
    assert nll[1] == pytest.approx(exported, abs=1e-4)
