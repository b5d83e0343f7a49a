"""The extension points' registries, parametrised so that a new entry is tested by adding it:
searches (searches/registry.py), task types (evolve/task_types.py), sparsifiers
(merge/sparsify.py) and the per-tensor table (arch.py)."""

from __future__ import annotations

import typing

import jax
import numpy as np
import pytest
import yaml

from evolve_world import echo_task, ppl_task, write_config
from evomerge_jax.arch import GLOBAL_TENSORS, LAYER_TENSORS
from evomerge_jax.errors import ConfigError, MergeError
from evomerge_jax.evolve.config import EvolveConfig, load_config
from evomerge_jax.evolve.config_sections import DFS_STRATEGY, GradientSection, TaskSection
from evomerge_jax.evolve.task_types import TASK_TYPES
from evomerge_jax.merge.sparsify import SPARSIFIERS, magnitude_table, sparsify
from evomerge_jax.searches.registry import SEARCHES
from evomerge_jax.searches.run import prepare


# ---- searches ---------------------------------------------------------------------------------

def test_every_config_search_has_an_entry():
    names = typing.get_args(EvolveConfig.model_fields["search"].annotation)
    assert set(names) == set(SEARCHES)
    for name, entry in SEARCHES.items():
        assert entry.name == name
        # a search for export, or (several stages) a runner and the final stage to export
        assert (entry.search_for is not None) != (entry.result_stage is not None)
        assert entry.result_stage is None or entry.run is not None
        assert entry.result_stage is None or entry.result_stage in SEARCHES


@pytest.mark.parametrize("name", list(SEARCHES))
def test_prepare_checks_without_reading_weights(name, evolve_world, tmp_path):
    sections = {"search": name}
    tasks = [echo_task(evolve_world)]
    if name == "dfs":
        sections["dfs"] = {"repeats": 1}
    if name == "pareto":
        sections["objectives"] = ["echo", "ppl"]
        tasks.append(ppl_task(evolve_world))
    if name == "m2n2":
        sections["m2n2"] = {"archive_size": 6, "children": 2}
    path = write_config(tmp_path / "c.yml", evolve_world, tasks, **sections)
    if name == "m2n2":  # its archive replaces the strategy's population
        data = yaml.safe_load(path.read_text())
        del data["strategy"]["population_size"]
        path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    prepared = prepare(cfg, log=lambda *_: None)
    stages = prepared if name == "ps+dfs" else (prepared,)
    # the config's population; ps+dfs's DFS stage runs under dfs.strategy (default: the paper's)
    sizes = [6, DFS_STRATEGY.population_size] if name == "ps+dfs" else [6]
    size = lambda s: (s.population_size if name in ("pareto", "m2n2")  # noqa: E731
                      else s.algo.population_size)
    if name == "gradient":  # one candidate, Adam's settings instead of a strategy
        assert [s.steps for *_, s in stages] == [GradientSection().steps]
    else:
        assert [size(s) for *_, s in stages] == sizes
    for search, loaded, _tokenizer, _strategy in stages:
        assert search.weights is None and search.num_dims > 0  # checked, nothing loaded
        assert [t.name for t in loaded] == [t["name"] for t in tasks]


# ---- task types -------------------------------------------------------------------------------

def test_task_type_keys_are_config_fields():
    fields = set(TaskSection.model_fields)
    for kind in TASK_TYPES.values():
        assert kind.keys <= fields, kind.name


@pytest.mark.parametrize("name", list(TASK_TYPES))
def test_a_key_of_another_type_is_refused(name):
    files = {"fitness": "f", "validation": "v", "test": "t"}
    own = {"target": "{t}"} if TASK_TYPES[name].needs_target else {}
    if TASK_TYPES[name].reads_files:
        own.update(data=files, prompt="{p}")
    else:  # lm_eval: its section, and no JSONL files or prompt template
        own.update(lm_eval={"task": "t"})
        for key, value in (("data", files), ("prompt", "{p}")):
            with pytest.raises(ValueError, match="do not apply"):
                TaskSection(name="x", type=name, **own, **{key: value})
    TaskSection(name="x", type=name, **own)
    foreign = sorted(set().union(*(k.keys for k in TASK_TYPES.values())) - TASK_TYPES[name].keys)
    for key in foreign:
        value = {"append_eos": False, "max_new_tokens": 3, "stop": ["."], "compare": "string",
                 "metric": "acc_norm", "lm_eval": {"task": "t"}}.get(key, "z")
        with pytest.raises(ValueError, match="do not apply"):
            TaskSection(name="x", type=name, **own, **{key: value})


def test_unknown_task_type_names_the_choices():
    with pytest.raises(ValueError, match="unknown type 'rouge'.*exact_match"):
        TaskSection(name="x", type="rouge", data={"fitness": "f", "validation": "v", "test": "t"},
                    prompt="{p}")


# ---- sparsifiers ------------------------------------------------------------------------------

DELTA = jax.random.normal(jax.random.key(0), (16, 24))


@pytest.mark.parametrize("name", list(SPARSIFIERS))
def test_sparsifier_properties_match_behaviour(name):
    entry = SPARSIFIERS[name]
    key = jax.random.key(1)
    if entry.random:
        with pytest.raises(MergeError, match="random"):
            sparsify(DELTA, 0.5, name)
    base = np.asarray(sparsify(DELTA, 0.5, name, key=key))
    if entry.uses_table:  # the table is a shortcut: the same mask with or without it
        np.testing.assert_array_equal(
            np.asarray(sparsify(DELTA, 0.5, name, key=key, table=magnitude_table(DELTA))), base)
    # a parameter changes the result exactly when the sparsifier reads it
    for param, other in (("gamma", 0.2), ("epsilon", 0.3)):
        changed = np.asarray(sparsify(DELTA, 0.5, name, key=key, **{param: other}))
        assert (param in entry.reads) == (not np.array_equal(changed, base)), (name, param)


# ---- the per-tensor table ---------------------------------------------------------------------

def test_tensor_table_is_complete_and_consistent():
    for short, info in LAYER_TENSORS.items():
        assert info.side in ("attn", "mlp"), short
        assert info.fold in (None, "divide", "sign"), short
        # a tensor written into the residual stream is an output projection (or its bias, or
        # Mixtral's experts' down projections), or Gemma's post-norm of one (the family then
        # overrides the projection's rule)
        assert (info.fold == "divide") == short.startswith(("o_", "down_", "experts_down",
                                                            "attn_post_", "mlp_post_")), short
        assert info.norm == short.endswith("norm"), short
    assert set(GLOBAL_TENSORS) == {"embed", "final_norm", "lm_head"}
    assert all(info.side is None for info in GLOBAL_TENSORS.values())


def test_bad_search_name_is_one_config_error(tmp_path):
    (tmp_path / "c.yml").write_text("search: nope\nbase_model: a\nmodels: [b]\ntasks: []\n"
                                    "output_dir: run\n")
    with pytest.raises(ConfigError, match="search"):
        load_config(tmp_path / "c.yml")
