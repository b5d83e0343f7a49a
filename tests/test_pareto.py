"""search: pareto (NSGA-II over PS genomes). The maths against a brute-force float64 reference;
then a run on two tasks each held by one source, whose true front is known from a grid of merge
weights: the run's front is non-dominated, close to the grid's and reaches both of its ends; a
run killed midway and resumed writes the same front; `export --point K` writes point K."""

import json

import numpy as np
import pytest
import torch
import transformers

from evolve_world import continuation_files, write_config
from evomerge_jax.cli import main
from evomerge_jax.evolve import pareto
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.evolve.config import load_config
from evomerge_jax.searches.pareto import objective_matrix, prepare_pareto
from evomerge_jax.searches.run import evolve

GRID = np.linspace(0.0, 1.0, 11)
# How far (as a fraction of the grid front's range on each objective) the run's front may fall
# short of the grid's: the run selects on the fitness split and scores its front on validation,
# the grid is scored on validation directly, and the run spends 96 evaluations to the grid's 121.
TOLERANCE = 0.15
GENERATIONS = 12
POPULATION = 8


# ---- the maths -------------------------------------------------------------------------------

def _reference_ranks(f):
    """Brute force: peel the points no remaining point dominates."""
    rank, left, front_no = np.full(len(f), -1), set(range(len(f))), 0
    while left:
        front = {i for i in left if not any(np.all(f[j] >= f[i]) and np.any(f[j] > f[i])
                                            for j in left)}
        for i in front:
            rank[i] = front_no
        left -= front
        front_no += 1
    return rank


def _reference_crowding(f, rank):
    dist = np.zeros(len(f))
    for r in set(rank):
        idx = np.flatnonzero(rank == r)
        for m in range(f.shape[1]):
            order = idx[np.lexsort((idx, f[idx, m]))]
            span = f[order[-1], m] - f[order[0], m]
            dist[order[0]] = dist[order[-1]] = np.inf
            for a, i, b in zip(order[:-2], order[1:-1], order[2:]):
                dist[i] += (f[b, m] - f[a, m]) / (span if span > 0 else 1.0)
    return dist


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sort_and_crowding_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 6, size=(40, 2 + seed % 2)).astype(np.float64)  # many ties
    f[:, 0] += rng.uniform(size=40) * (seed == 2)
    rank = np.asarray(pareto.ranks(f))
    np.testing.assert_array_equal(rank, _reference_ranks(f))
    dist = np.asarray(pareto.crowding(f, rank))
    want = _reference_crowding(f, rank)  # ties broken by index, as the jitted sort does
    assert np.isfinite(want).sum() >= 5
    np.testing.assert_allclose(dist, want, rtol=1e-6)


def test_select_keeps_whole_fronts_first_and_nan_last():
    f = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.2], [np.nan, 5.0], [0.1, 0.1]])
    keep = pareto.select(f, 4)
    assert set(keep[:3]) == {0, 1, 2} and keep[3] == 3
    assert 4 not in pareto.select(f, 5)
    np.testing.assert_array_equal(pareto.front(f), [0, 1, 2])


def test_variation_stays_in_the_box_and_is_seeded():
    import jax
    parents = np.random.default_rng(0).uniform(size=(8, 5)).astype(np.float32)
    a = np.asarray(pareto.vary(jax.random.key(3), parents))
    b = np.asarray(pareto.vary(jax.random.key(3), parents))
    np.testing.assert_array_equal(a, b)
    assert a.shape == parents.shape and a.min() >= 0 and a.max() <= 1
    assert not np.allclose(a, parents)


@pytest.mark.parametrize("change, message", [
    ({"objectives": ["a"]}, "two or more distinct task names"),
    ({"objectives": ["a", "zz"]}, "zz not among the tasks"),
    ({"strategy": {"name": "CMA_ES"}}, "strategy.name does not apply"),
    ({"search": "ps"}, "objectives apply to search pareto only"),
])
def test_bad_objectives_are_one_line_errors(change, message):
    from evomerge_jax.errors import ConfigError
    from evomerge_jax.evolve.config import parse_config
    files = {"fitness": "f", "validation": "v", "test": "t"}
    task = {"type": "perplexity", "data": files, "prompt": "{p}", "target": "{t}"}
    data = {"search": "pareto", "base_model": "b", "models": ["m"], "output_dir": "o",
            "objectives": ["a", "b"], "tasks": [{"name": "a", **task}, {"name": "b", **task}],
            **change}
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


# ---- a run with a known front ----------------------------------------------------------------

def _non_dominated(f):
    return np.array([not any(np.all(g >= x) and np.any(g > x) for g in f) for x in f])


@pytest.fixture(scope="module")
def two_skills(evolve_world, tmp_path_factory):
    """Tasks `a` and `b`: the perplexity of source 0's and of source 1's own continuations."""
    root = tmp_path_factory.mktemp("pareto")
    tasks = []
    for name, source, seed in (("a", 0, 21), ("b", 1, 22)):
        model = transformers.AutoModelForCausalLM.from_pretrained(evolve_world["sources"][source])
        with torch.no_grad():
            files = continuation_files(model.eval(), root / name, sizes=(32, 24, 24), seed=seed)
        tasks.append({"name": name, "type": "perplexity", "data": files, "prompt": "{prompt}",
                      "target": "{target}", "batch_size": 32})

    def config(path, generations=GENERATIONS):
        return write_config(path, evolve_world, tasks, search="pareto", objectives=["a", "b"],
                            merge={"method": "task_arithmetic", "evolve": ["weight"]},
                            grouping={"layers": "all", "globals": "nearest"},
                            strategy={"population_size": POPULATION, "generations": generations,
                                      "sigma": 0.5, "seed": 0})

    cfg_path = config(root / "cfg.yml")
    results = evolve(cfg_path, progress=False, log=lambda *_: None)
    return {"root": root, "config": config, "results": results, "run": root / "run"}


def _grid_front(cfg_path):
    """Every weight pair of an 11 x 11 grid scored on validation through the population pass."""
    search, tasks, tokenizer, _ = prepare_pareto(load_config(cfg_path), log=lambda *_: None)
    search.load()
    # chunked as the run's evaluator is (the population), so its compiled pass is reused
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=POPULATION)
    genomes = np.array([[x, y] for x in GRID for y in GRID], np.float32)
    keys = np.zeros((len(genomes), 2), np.uint32)
    f = objective_matrix(evaluator.split_scores(genomes, keys, "validation"), ["a", "b"])
    return f[_non_dominated(f)]


def test_run_front_is_non_dominated_near_the_grid_front_and_covers_both_ends(two_skills):
    run = two_skills["run"]
    saved = json.loads((run / "pareto.json").read_text())
    assert saved["objectives"] == ["a", "b"]
    points = saved["points"]
    assert len(points) >= 3 and [p["point"] for p in points] == list(range(len(points)))
    run_f = np.array([[p["validation"]["a"], p["validation"]["b"]] for p in points])
    assert _non_dominated(run_f).all()
    assert all({"a", "b"} == set(p["test"]) for p in points)
    grid = _grid_front(two_skills["root"] / "cfg.yml")
    scale = grid.max(axis=0) - grid.min(axis=0)
    tol = TOLERANCE * scale
    # no grid point beats a run point by more than the tolerance on both objectives at once
    for x in run_f:
        assert np.min(np.max((grid - x) / scale, axis=1)) <= TOLERANCE, (x, grid)
    # both ends: the run reaches each objective's best on the grid front
    assert run_f[:, 0].max() >= grid[:, 0].max() - tol[0]
    assert run_f[:, 1].max() >= grid[:, 1].max() - tol[1]
    # the sources' ends differ: the trade-off is real
    assert scale.min() > 0.05
    for name in ("pareto.png", "results.json", "log.jsonl", "fitness.png", "best/recipe.yaml"):
        assert (run / name).is_file(), name
    assert two_skills["results"]["pareto"]["points"] == points


def test_resume_after_kill_writes_the_same_front(two_skills, tmp_path):
    cfg = two_skills["config"](tmp_path / "cfg.yml", generations=5)
    evolve(cfg, progress=False, log=lambda *_: None, export=False)
    cfg = two_skills["config"](tmp_path / "cfg.yml")
    assert main(["evolve", str(cfg), "--resume"]) == 0
    resumed = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert resumed == json.loads((two_skills["run"] / "pareto.json").read_text())


def test_export_a_point_of_the_front(two_skills, tmp_path, capsys):
    run = two_skills["run"]
    points = json.loads((run / "pareto.json").read_text())["points"]
    last = len(points) - 1
    assert main(["export", str(run), str(tmp_path / "p"), "--point", str(last)]) == 0
    recipe = (tmp_path / "p" / "recipe.yaml").read_text()
    assert f"Pareto point {last}" in recipe
    weights = [s["parameters"]["weight"] for s in
               __import__("yaml").safe_load(recipe)["slices"][0]["sources"][1:]]
    np.testing.assert_allclose(weights, points[last]["recipe"]["values"]["weight"][0], atol=1e-6)
    assert main(["export", str(run), str(tmp_path / "q"), "--point", str(last + 1)]) == 2
    assert "out of range" in capsys.readouterr().err
