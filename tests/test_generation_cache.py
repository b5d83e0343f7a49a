"""Generate tasks in the PS pass: layers merged once per device call and kept (`cached`) or
re-merged at every decode step (`remerge`). Both give transformers' greedy tokens of each
candidate's exported model, and an evolve run logs the same in either mode; the memory model
chooses the mode, and the plan shows it."""

from __future__ import annotations

import json
from dataclasses import replace

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from evolve_world import echo_task, write_config
from evomerge_jax.evolve.config import load_config
from evomerge_jax.evolve.evaluate import Evaluator, population_pass
from evomerge_jax.evolve.metrics import Generation
from evomerge_jax.parallel.seeds import candidate_keys
from evomerge_jax.searches.plan import plan_memory, plan_table
from evomerge_jax.searches.run import evolve, prepare

NEW = 6


def _gen_task(world) -> dict:
    task = echo_task(world, name="gen", type="generate", max_new_tokens=NEW,
                     answer_regex=r"\S+", compare="string", batch_size=4)
    task.pop("append_eos")
    return task


def _config(world, path, mode: str, **sections):
    """Task arithmetic: the pass compiles 3-4x faster than with DARE-TIES; the mode changes
    only where `merge_layer` runs, not what it computes (benchmarks/bench_generation.py checks
    DARE-TIES on the real model)."""
    return write_config(path, world, [_gen_task(world)],
                        merge={"method": "task_arithmetic", "evolve": ["weight"]},
                        strategy={"population_size": 4, "generations": 2, "seed": 0},
                        compute={"generation": mode}, **sections)


@pytest.fixture(scope="module")
def engine(evolve_world, tmp_path_factory):
    cfg = load_config(_config(evolve_world, tmp_path_factory.mktemp("gen") / "cfg.yml", "auto"))
    search, tasks, tokenizer, _ = prepare(cfg)
    search.load()
    return search, tasks, tokenizer


def _left_padded(tasks, n: int):
    prompts = tasks[0].splits["test"].arrays
    width = prompts["mask"].shape[1]
    tokens, mask = np.zeros((n, width), np.int32), np.zeros((n, width), np.int32)
    for i in range(n):
        row = prompts["tokens"][i][prompts["mask"][i] == 1]
        tokens[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return tokens, mask


def test_cached_and_remerged_generation_equal_transformers(engine, tmp_path):
    """Each candidate's new tokens, in both modes, equal transformers' greedy `generate` of that
    candidate's exported model (DARE-TIES: the masks are the pass's own, recomputed at export)."""
    search, tasks, tokenizer = engine
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=3)
    assert evaluator.generation == "cached"  # plenty of memory: auto keeps the merged layers
    genomes = np.random.default_rng(4).uniform(0.1, 0.9, (3, search.num_dims)).astype(np.float32)
    keys = candidate_keys(0, 0, range(3))
    tokens, mask = _left_padded(tasks, 4)
    batch = {"teacher": None, "generate": ({"tokens": jnp.asarray(tokens),
                                            "mask": jnp.asarray(mask)},)}
    out = {}
    for mode in ("cached", "remerge"):
        model = replace(evaluator.model, generation=mode)
        _, (generated,) = population_pass(model, (Generation(NEW, (2,), 0),), evaluator.mesh,
                                          evaluator.weights, jnp.asarray(genomes),
                                          jnp.asarray(keys), batch)
        out[mode] = np.asarray(generated)
    np.testing.assert_array_equal(out["cached"], out["remerge"])
    assert len({out["cached"][c].tobytes() for c in range(3)}) > 1  # the candidates differ
    for c in range(3):
        exported = search.export(genomes[c], keys[c], tmp_path / f"c{c}")
        hf = transformers.AutoModelForCausalLM.from_pretrained(exported).eval()
        with torch.no_grad():
            theirs = hf.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                                 max_new_tokens=NEW, do_sample=False, eos_token_id=2,
                                 pad_token_id=0)[:, tokens.shape[1]:].numpy()
        width = theirs.shape[1]  # transformers stops when every row has ended
        np.testing.assert_array_equal(out["cached"][c][:, :width], theirs)


def _log(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


def test_evolve_logs_the_same_in_either_mode(evolve_world, tmp_path):
    logs, messages = [], []
    for mode in ("cached", "remerge"):
        (tmp_path / mode).mkdir()
        cfg = _config(evolve_world, tmp_path / mode / "cfg.yml", mode)
        evolve(cfg, progress=False, log=messages.append, export=False)
        logs.append(_log(tmp_path / mode / "run"))
        plan = json.loads((tmp_path / mode / "run" / "plan.json").read_text())
        assert plan["generation"] == mode
    assert logs[0] == logs[1] and len(logs[0]) == 2
    assert any("generation: cached" in m for m in messages)
    assert any("generation: remerge" in m for m in messages)


def test_the_plan_chooses_and_shows_the_mode(evolve_world, tmp_path, capsys):
    """auto: cached while one candidate with its merged layers fits, remerge below that; the
    merged layers are one model in the forward dtype per candidate."""
    cfg = load_config(_config(evolve_world, tmp_path / "cfg.yml", "auto"))
    roomy = plan_memory(cfg, 1, "1GiB")
    assert roomy.generation == "cached"
    layers = roomy.per_candidate.layers
    spec = prepare(cfg)[0].spec
    one_layer = sum(int(np.prod(spec.layer_shape(n))) for n in spec.layer_tensors)
    assert layers == spec.num_layers * one_layer * 4  # float32
    forced = plan_memory(load_config(_config(evolve_world, tmp_path / "f.yml", "remerge")), 1,
                         "1GiB")
    assert forced.generation == "remerge" and forced.per_candidate.layers == 0
    assert roomy.per_candidate.total - layers == forced.per_candidate.total
    # Memory for one candidate without its merged layers only: the remerge fallback.
    tight = forced.weights + forced.tables + forced.shared + max(forced.per_candidate.total,
                                                                 forced.per_global.total)
    small = plan_memory(cfg, 1, tight, check=False)
    assert small.generation == "remerge" and small.fits and small.local == 1
    capsys.readouterr()
    from rich.console import Console
    Console(width=200).print(plan_table(roomy))
    out = capsys.readouterr().out
    assert "generation: cached" in out and "merged layers (cached generation)" in out
