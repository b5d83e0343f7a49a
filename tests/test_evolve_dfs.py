"""DFS search in the evolution loop (`search: dfs`, `search: ps+dfs`).

Known optimum: the target is a known path over the two sources (A0, B1, B2, A2 with W = 1, built
with `known_path_target`), the fitness is agreement with its greedy 2-token continuations; a short
CMA-ES run must find a path that agrees with the target on the held-out test split by at least
TOLERANCE (2 of 32 items) more than either source does. The path's score inside the population
pass equals its exported model's score alone; ps+dfs runs end to end and resumes to the
uninterrupted result; each bad input is one line of error before any compute.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import transformers

from evolve_world import continuation_files, save_with_tokenizer, write_config
from evomerge_jax.checkpoint import load
from evomerge_jax.dfs import known_path_target, path_spec_for, stack_sources, save_path_model
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator
from evomerge_jax.searches.run import eval_model, evolve, export_run, prepare
from evomerge_jax.parallel.seeds import candidate_keys
from tiny_models import make_model

TARGET_SLOTS = (0, 4, 5, 14)  # A0 (fixed start), B1, B2 (first repetition), A2 (fixed end)
TOLERANCE = 2 / 32            # test split: 32 items
POPULATION = 16
QUIET = dict(progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def dfs_world(evolve_world, tmp_path_factory):
    """The known-path target, its agreement tasks, and a finished `search: dfs` run."""
    root = tmp_path_factory.mktemp("dfs")
    names = [str(p) for p in evolve_world["sources"]]
    ckpts = [load(p) for p in evolve_world["sources"]]
    stack = stack_sources(ckpts, names)
    _, path, _ = known_path_target(stack, path_spec_for(ckpts, names), TARGET_SLOTS)
    save_path_model(stack, path, root / "target", tokenizer_from=names[0])
    target = transformers.AutoModelForCausalLM.from_pretrained(root / "target").eval()
    with torch.no_grad():
        files = continuation_files(target, root / "agree", sizes=(64, 32, 32), seed=9)
    tasks = [{"name": "agree", "type": "exact_match", "data": files, "prompt": "{prompt}",
              "target": "{target}", "append_eos": False, "batch_size": 64},
             {"name": "ppl", "type": "perplexity", "data": files, "prompt": "{prompt}",
              "target": "{target}", "batch_size": 64, "weight": 0.0}]
    cfg = write_config(root / "cfg.yml", evolve_world, tasks, search="dfs",
                       strategy={"name": "CMA_ES", "population_size": POPULATION,
                                 "generations": 6, "seed": 1})
    results = evolve(cfg, export=True, **QUIET)
    return {"root": root, "cfg": cfg, "tasks": tasks, "path": path, "results": results,
            "run": root / "run"}


def test_dfs_finds_a_path_closer_to_the_known_target(dfs_world, evolve_world):
    found = dfs_world["results"]["scores"]["evolved"]["test"]["agree"]["acc"]
    sources = [eval_model(p, dfs_world["cfg"], ("test",), log=lambda *_: None)["test"]["agree"]
               ["acc"] for p in evolve_world["sources"]]
    target = eval_model(dfs_world["root"] / "target", dfs_world["cfg"], ("test",),
                        log=lambda *_: None)["test"]["agree"]["acc"]
    assert target == 1.0  # the JAX forward reproduces the torch target's own outputs
    assert found >= max(sources) + TOLERANCE, (found, sources)
    steps = dfs_world["results"]["best"]["recipe"]["path"]["steps"]
    assert steps[0]["layer"] == 0 and steps[-1]["layer"] == 2  # the fixed ends: A0 ... A2
    assert (dfs_world["run"] / "best" / "path.json").is_file()


def test_population_score_equals_the_exported_model_alone(dfs_world):
    run = dfs_world["run"]
    best = json.loads((run / "best.json").read_text())
    cfg = load_config(dfs_world["cfg"])
    search, tasks, tokenizer, _ = prepare(cfg)
    search.load()
    # The best among random others, at index 3 of a population chunk of the run's size.
    rng = np.random.default_rng(0)
    genomes = search.initial_mean() + 0.3 * rng.standard_normal((POPULATION, search.num_dims))
    genomes[3] = best["genome"]
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=POPULATION,
                          log=lambda *_: None)
    inside = evaluator.split_scores(genomes.astype(np.float32),
                                    candidate_keys(0, 0, range(POPULATION)), "test")
    export_run(run, dfs_world["root"] / "exported", log=lambda *_: None)
    alone = eval_model(dfs_world["root"] / "exported", dfs_world["cfg"], ("test",),
                       log=lambda *_: None)["test"]
    assert inside["agree"]["acc"][3] == alone["agree"]["acc"]
    np.testing.assert_allclose(inside["ppl"]["nll"][3], alone["ppl"]["nll"], rtol=1e-4)


def _ps_dfs_config(dfs_world, evolve_world, out):
    return write_config(out / "cfg.yml", evolve_world, dfs_world["tasks"], search="ps+dfs",
                        output_dir=str(out / "run"),
                        merge={"method": "task_arithmetic", "evolve": ["weight"]},
                        strategy={"population_size": 8, "generations": 2, "seed": 0},
                        dfs={"b": str(evolve_world["sources"][1]),
                             "strategy": {"name": "CMA_ES", "population_size": POPULATION,
                                          "generations": 2, "seed": 0}})


def test_ps_dfs_end_to_end_and_resume(dfs_world, evolve_world, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight = evolve(_ps_dfs_config(dfs_world, evolve_world, tmp_path / "a"), export=False,
                      **QUIET)
    run = tmp_path / "a" / "run"
    assert (run / "ps" / "model" / "config.json").is_file()
    assert (run / "dfs" / "best.json").is_file()
    assert straight["best"]["recipe"]["sources"] == [str(run / "ps" / "model"),
                                                     str(evolve_world["sources"][1])]
    assert "ps" in straight and (run / "results.json").is_file()

    # Interrupted in the PS stage (after its generation 0), then resumed.
    cfg = _ps_dfs_config(dfs_world, evolve_world, tmp_path / "b")

    def stop(generation, line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evolve(cfg, export=False, on_generation=stop, **QUIET)
    assert not (tmp_path / "b" / "run" / "dfs").exists()
    resumed = evolve(cfg, resume=True, export=False, **QUIET)
    # Interrupted between the stages (DFS stage lost): the finished PS stage is not rerun.
    ps_log = (tmp_path / "b" / "run" / "ps" / "log.jsonl").read_text()
    shutil.rmtree(tmp_path / "b" / "run" / "dfs")
    messages = []
    again = evolve(cfg, resume=True, export=False, progress=False, log=messages.append)
    assert any("not rerun" in m for m in messages)
    assert (tmp_path / "b" / "run" / "ps" / "log.jsonl").read_text() == ps_log
    for other in (resumed, again):
        assert other["ps"] == straight["ps"]  # the PS stage's best (generation, recipe, scores)
        assert other["best"]["validation_score"] == straight["best"]["validation_score"]
        np.testing.assert_allclose(other["best"]["recipe"]["values"]["scale"],
                                   straight["best"]["recipe"]["values"]["scale"], atol=1e-6)
        assert other["best"]["recipe"]["values"]["used"] == \
            straight["best"]["recipe"]["values"]["used"]
    out = export_run(tmp_path / "b" / "run", tmp_path / "exported", log=lambda *_: None)
    assert (out / "path.json").is_file()


def test_bad_dfs_inputs(evolve_world, tmp_path, cli_error):
    src = evolve_world["sources"][0]
    wide = save_with_tokenizer(make_model("llama", 1, hidden_size=48), tmp_path / "wide")
    vocab = save_with_tokenizer(make_model("llama", 1, vocab_size=101), tmp_path / "vocab")
    short = save_with_tokenizer(make_model("llama", 1, num_hidden_layers=2), tmp_path / "short")
    task = [{"name": "t", "type": "exact_match", "data": evolve_world["echo_files"],
             "prompt": "{prompt}", "target": "{target}"}]

    def cfg(name, a, b, **dfs):
        (tmp_path / name).mkdir()
        return write_config(tmp_path / name / "cfg.yml", evolve_world, task, search="dfs",
                            dfs={"a": str(a), "b": str(b), **dfs})

    assert "hidden_size: " in cli_error(cfg("cfg_wide", src, wide))
    assert "vocab_size: " in cli_error(cfg("cfg_vocab", src, vocab))
    assert "dfs.repeats (r) must be at least 1, got 0" in cli_error(
        cfg("cfg_r0", src, src, repeats=0))
    assert "DFS path is empty" in cli_error(cfg("cfg_empty", short, src, repeats=1))
    ps_a = write_config(tmp_path / "cfg.yml", evolve_world, task, search="ps+dfs",
                        dfs={"a": str(src)})
    assert "dfs.a cannot be set under ps+dfs" in cli_error(ps_a)
