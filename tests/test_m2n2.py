"""search: m2n2 (split-point crossover, resource competition, attraction). The maths against
direct float64 loops; per-example scores against the task scores they sum to; then a run on one
task whose examples split into two skills, each held by one source: M2N2 breeds a child better than
both sources on the union (the sources scored as plain checkpoints, not through the merge); a run
stopped midway and resumed ends with the same archive and best."""

import json

import numpy as np
import pytest
import torch
import transformers
import yaml
from evolve_world import continuation_records, echo_task, write_config, write_jsonl

from evomerge_jax.cli import main
from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve import m2n2
from evomerge_jax.evolve.config import load_config, parse_config
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.ps.genome import GenomeLayout
from evomerge_jax.ps.search import prepare_ps
from evomerge_jax.searches.run import evolve

GENERATIONS = 8
M2N2 = {"archive_size": 6, "children": 4, "alpha": 1.0}


# ---- the maths -------------------------------------------------------------------------------

def test_shared_fitness_and_attraction_match_loops():
    rng = np.random.default_rng(0)
    items = rng.uniform(size=(5, 7)) * (rng.uniform(size=(5, 7)) > 0.3)
    for alpha in (0.0, 0.5, 1.0):
        want = [sum(items[i, j] / (items[:, j].sum() + m2n2.EPS) ** alpha for j in range(7))
                for i in range(5)]
        np.testing.assert_allclose(m2n2.shared_fitness(items, alpha), want, rtol=1e-12)
    np.testing.assert_allclose(m2n2.shared_fitness(items, 0.0), items.sum(1), rtol=1e-12)
    want = [0.0 if k == 2 else sum(max(items[k, j] - items[2, j], 0) / (items[:, j].sum()
                                                                        + m2n2.EPS)
                                   for j in range(7)) for k in range(5)]
    np.testing.assert_allclose(m2n2.attraction(items, 2), want, rtol=1e-12)
    # the member that alone solves a scarce example outranks one that solves common ones
    # (without competition, alpha 0, the common solver wins)
    niche = np.array([[1, 1, 0.0], [1, 1, 0.0], [1, 1, 0.0], [0, 0, 1.0]])
    assert np.argmax(m2n2.shared_fitness(niche, 1.0)) == 3
    assert np.argmax(m2n2.shared_fitness(niche, 0.0)) == 0
    assert np.argmax(m2n2.attraction(niche, 0)) == 3
    assert m2n2.replace_worst(niche, np.array([0, 0, 1.0]), 1.0) is None  # a copy: no gain
    assert m2n2.replace_worst(niche[:3], np.array([0, 0, 1.0]), 1.0) in (0, 1, 2)


def test_crossover_split_and_gene_positions():
    layout = GenomeLayout(params=("weight", "lambda"), per_source=(True, False),
                          bounds=((0, 1), (0, 1)), num_sources=2, num_layers=6, layers_per_group=2,
                          split_attn_mlp=True, globals_mode="own")
    pos = m2n2.gene_positions(layout)
    # groups: 3 layer groups x (attn, mlp) + globals; weight [7, 2] then lambda [7]
    want_groups = [0, 0, 1, 1, 2, 2, 3]
    np.testing.assert_array_equal(pos, np.repeat(want_groups, 2).tolist() + want_groups)
    a, b = np.zeros(len(pos)), np.ones(len(pos))
    child = m2n2.crossover(a, b, pos, 2, 0.25)
    np.testing.assert_allclose(child, np.where(pos < 2, 0.75, 0.25))
    np.testing.assert_allclose(m2n2.crossover(a, b, pos, 0, 0.25), 0.25)
    rng = np.random.default_rng(1)
    assert m2n2.draw(rng, [0.0, 0.0, 0.0], exclude=1) in (0, 2)
    assert all(m2n2.draw(rng, [0.0, 5.0, 1.0], exclude=1) == 2 for _ in range(5))


@pytest.mark.parametrize("change, message", [
    ({"search": "ps"}, "the m2n2 section applies to search m2n2 only"),
    ({"strategy": {"name": "CMA_ES"}}, "strategy.name and population_size do not apply"),
    ({"m2n2": {"archive_size": 1}}, "m2n2.archive_size"),
    ({"m2n2": {"alpha": -1}}, "m2n2.alpha"),
])
def test_bad_m2n2_config_is_a_one_line_error(change, message):
    files = {"fitness": "f", "validation": "v", "test": "t"}
    data = {"search": "m2n2", "base_model": "b", "models": ["m"], "output_dir": "o",
            "m2n2": {"archive_size": 4}, "tasks": [{"name": "a", "type": "perplexity",
                                                   "data": files, "prompt": "{p}"}], **change}
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


# ---- per-example scores ----------------------------------------------------------------------

def test_item_scores_average_to_the_task_score(evolve_world, tmp_path):
    cfg = load_config(write_config(tmp_path / "c.yml", evolve_world, [echo_task(evolve_world)],
                                   merge={"method": "task_arithmetic", "evolve": ["weight"]},
                                   grouping={"globals": "nearest"}))
    search, tasks, tokenizer, _ = prepare_ps(cfg, log=lambda *_: None)
    search.load()
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=2)
    genomes = np.array([[1.0, 0.0], [0.3, 0.6]], np.float32)
    scores, items = evaluator.split_items(genomes, np.zeros((2, 2), np.uint32), "validation")
    echo = items["echo"]
    assert echo.shape == (2, 16) and set(np.unique(echo)) <= {0.0, 1.0}
    np.testing.assert_allclose(echo.mean(1), scores["echo"]["acc"], rtol=1e-12)


# ---- a run on two skills ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_skills(evolve_world, tmp_path_factory):
    """One perplexity task: half its examples are source 0's own continuations, half source 1's."""
    root = tmp_path_factory.mktemp("m2n2")
    halves = []
    for source, seed in ((0, 31), (1, 32)):
        model = transformers.AutoModelForCausalLM.from_pretrained(evolve_world["sources"][source])
        with torch.no_grad():
            halves.append([continuation_records(model.eval(), n, seed * 10 + i)
                           for i, n in enumerate((32, 32, 32))])
    files = {split: str(write_jsonl(root / f"{split}.jsonl", halves[0][i] + halves[1][i]))
             for i, split in enumerate(("fitness", "validation", "test"))}
    task = {"name": "union", "type": "perplexity", "data": files, "prompt": "{prompt}",
            "target": "{target}", "batch_size": 64}

    def config(path, generations=GENERATIONS, baselines=False):
        path = write_config(path, evolve_world, [task], search="m2n2", m2n2=M2N2,
                            merge={"method": "task_arithmetic", "evolve": ["weight"]},
                            grouping={"layers": "per_layer", "globals": "nearest"},
                            strategy={"generations": generations, "seed": 0},
                            baselines=baselines)
        data = yaml.safe_load(path.read_text())
        del data["strategy"]["population_size"]
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    results = evolve(config(root / "cfg.yml", baselines=True), progress=False,
                     log=lambda *_: None)
    return {"root": root, "config": config, "results": results, "run": root / "run"}


def test_a_bred_child_beats_both_sources_on_the_union(two_skills):
    results, run = two_skills["results"], two_skills["run"]
    scores = results["scores"]
    best = scores["evolved"]["validation"]["union"]["score"]
    sources = [scores[f"source src{k}"]["validation"]["union"]["score"] for k in (0, 1)]
    assert best > max(sources) + 0.02, (best, sources)
    assert results["best"]["generation"] > 0  # bred, not one of the initial archive
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == list(range(GENERATIONS))
    assert lines[0]["population"] == M2N2["archive_size"]
    assert all(x["population"] == M2N2["children"] for x in lines[1:])
    assert sum(x["archive"]["replaced"] for x in lines) > 0
    assert results["m2n2"]["evaluations"] == 6 + (GENERATIONS - 1) * 4
    assert len(results["m2n2"]["archive"]) == M2N2["archive_size"]
    for name in ("m2n2.json", "best.json", "fitness.png", "best/recipe.yaml"):
        assert (run / name).is_file(), name


def test_resume_after_a_stop_ends_with_the_same_archive(two_skills, tmp_path):
    cfg = two_skills["config"](tmp_path / "cfg.yml", generations=GENERATIONS // 2)
    evolve(cfg, progress=False, log=lambda *_: None, export=False)
    cfg = two_skills["config"](tmp_path / "cfg.yml")
    assert main(["evolve", str(cfg), "--resume"]) == 0
    resumed = json.loads((tmp_path / "run" / "m2n2.json").read_text())
    whole = json.loads((two_skills["run"] / "m2n2.json").read_text())
    assert resumed == whole
