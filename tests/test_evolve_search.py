"""The search loop end to end: outputs of a run, resume after a kill, non-finite fitness."""

import json
import shutil

import numpy as np
import pytest
import transformers
import yaml

from evolve_world import POPULATION, standard_config
from evomerge_jax.cli import main
from evomerge_jax.searches import run as run_module
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.searches.run import evolve
from evomerge_jax.evolve.strategy import losses

GENERATIONS = 3


class Killed(Exception):
    pass


def _log(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


@pytest.fixture(scope="module")
def uninterrupted(evolve_world, tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    cfg = standard_config(evolve_world, root / "cfg.yml")
    results = evolve(cfg, progress=False, log=lambda *_: None)
    return root / "run", results


def test_run_writes_log_plots_checkpoints_and_best(uninterrupted):
    run_dir, results = uninterrupted
    lines = _log(run_dir)
    assert [x["generation"] for x in lines] == list(range(GENERATIONS))
    assert all(x["population"] == POPULATION for x in lines)
    best = results["best"]
    chosen = lines[best["generation"]]["generation_best"]
    assert chosen["validation"] == best["validation_score"]  # chosen on validation
    assert best["validation_score"] == max(x["generation_best"]["validation"] for x in lines)
    assert {"validation", "test"} <= set(results["scores"]["evolved"])
    for name in ("fitness.png", "recipe.png", "results.json", "best.json", "best/recipe.yaml"):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "checkpoints").iterdir())) >= 1
    model = transformers.AutoModelForCausalLM.from_pretrained(run_dir / "best")
    assert model.config.num_hidden_layers == 3
    recipe = (run_dir / "best" / "recipe.yaml").read_text()
    assert yaml.safe_load(recipe)["merge_method"] == "dare_ties"
    assert "mergekit from its own RNG" in recipe


def test_resume_after_kill_equals_uninterrupted(uninterrupted, evolve_world, tmp_path):
    """Killed after generation 1's log line but before its checkpoint, resumed from the CLI."""
    reference_dir, reference = uninterrupted
    cfg = standard_config(evolve_world, tmp_path / "cfg.yml")

    def kill(generation, _line):
        if generation == 1:
            raise Killed

    with pytest.raises(Killed):
        evolve(cfg, progress=False, log=lambda *_: None, on_generation=kill)
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "1")  # the save the kill interrupted
    assert len(_log(tmp_path / "run")) == 2
    assert main(["evolve", str(cfg), "--resume"]) == 0
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    assert resumed["best"] == reference["best"]
    assert resumed["scores"] == reference["scores"]
    assert _log(tmp_path / "run") == _log(reference_dir)


def test_resume_rejects_a_changed_config(uninterrupted, evolve_world, tmp_path, capsys):
    run_dir, _ = uninterrupted
    cfg = standard_config(evolve_world, tmp_path / "cfg.yml", output_dir=str(run_dir),
                          merge={"method": "ties"})
    assert main(["evolve", str(cfg), "--resume"]) == 2
    assert "differs from the run's saved config.yml in merge" in capsys.readouterr().err
    assert main(["evolve", str(cfg)]) == 2
    assert "pass --resume to continue it or --overwrite" in capsys.readouterr().err


def test_non_finite_fitness_ranks_last_and_the_run_goes_on(evolve_world, tmp_path, monkeypatch):
    loss, bad = losses(np.array([0.5, np.nan, np.inf, 0.7, -np.inf]), np.ones(5, bool))
    assert bad == 3 and np.all(loss[[1, 2, 4]] > loss[[0, 3]].max())
    real = Evaluator.fitness_scores

    def poisoned(self, genomes, keys, rows):
        scores = real(self, genomes, keys, rows)
        scores["ppl"]["score"][1] = np.nan
        return scores

    monkeypatch.setattr(Evaluator, "fitness_scores", poisoned)
    cfg = standard_config(evolve_world, tmp_path / "cfg.yml", strategy={"generations": 2})
    messages = []
    results = run_module.evolve(cfg, progress=False, log=messages.append, export=False)
    lines = _log(tmp_path / "run")
    assert [x["non_finite"] for x in lines] == [1, 1]
    assert any("non-finite fitness ranked last" in m for m in messages)
    # The poisoned candidate ranks last, so it is never a generation's best; the run's best is
    # the generation whose best scored highest on validation (the first one on a tie: only a
    # strictly higher score replaces the best so far).
    assert all(x["generation_best"]["candidate"] != 1 for x in lines)
    validation = [x["generation_best"]["validation"] for x in lines]
    winner = validation.index(max(validation))
    assert results["best"]["generation"] == winner
    assert results["best"]["candidate"] == lines[winner]["generation_best"]["candidate"]
    assert results["best"]["validation_score"] == validation[winner]


def test_export_and_eval_commands(uninterrupted, tmp_path, capsys):
    """`evomerge export` rebuilds the run's best dir bit for bit; `evomerge eval` scores it as the
    run did on the test split."""
    from safetensors.numpy import load_file

    run_dir, results = uninterrupted
    assert main(["export", str(run_dir), str(tmp_path / "best")]) == 0
    ours, theirs = (load_file(d / "model.safetensors") for d in (tmp_path / "best", run_dir / "best"))
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(ours[n], theirs[n]) for n in ours)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "best"), "--config", str(run_dir / "config.yml"),
                 "--split", "test"]) == 0
    table = capsys.readouterr().out
    acc = results["scores"]["evolved"]["test"]["echo"]["acc"]
    assert "test" in table and f"{acc:.4f}" in table
    assert main(["export", str(run_dir), str(tmp_path / "best")]) == 2  # exists: no overwrite
