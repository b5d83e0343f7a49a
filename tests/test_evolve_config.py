"""Evolve configs: every example under configs/evolve loads; each bad input is one line of error
from the CLI (exit 2) before any weight is loaded or any run dir is created."""

from pathlib import Path

import pytest
import yaml

from evolve_world import echo_task, save_with_tokenizer, standard_config, write_config, write_jsonl
from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve.config import load_config, parse_config
from tiny_models import make_model

CONFIGS = sorted((Path(__file__).parents[1] / "configs" / "evolve").glob("*.yml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_configs_load(path):
    cfg = load_config(path)
    assert cfg.search in ("ps", "dfs", "ps+dfs") and cfg.base_model.is_absolute()
    assert all(Path(t.data.fitness).is_absolute() if t.data is not None else
               t.lm_eval.include_path is None or t.lm_eval.include_path.is_absolute()
               for t in cfg.tasks)


def test_paper_config_is_the_paper_recipe():
    cfg = load_config(Path(__file__).parents[1] / "configs" / "evolve" / "ps_dare_ties.yml")
    assert cfg.merge.method == "dare_ties" and cfg.merge.evolve == ("weight", "density")
    assert cfg.merge.parameters == {"normalize": False}
    assert cfg.grouping.layers == "per_layer" and cfg.grouping.globals == "own"
    assert cfg.strategy.name == "CMA_ES" and cfg.strategy.mean == 0.5
    assert abs(cfg.strategy.sigma - 1 / 6) < 1e-6
    assert cfg.strategy.population_for((32 + 1) * 3 * 2) == 19  # 4 + floor(3 ln 198)


BASE = {"base_model": "b", "models": ["m"], "output_dir": "o",
        "tasks": [{"name": "t", "type": "exact_match", "prompt": "{q}", "target": "{a}",
                   "data": {"fitness": "f", "validation": "v", "test": "t"}}]}

CONFIG_ERRORS = {
    "unknown_strategy": ({"strategy": {"name": "CMAES"}},
                         "unknown evosax algorithm 'CMAES'; choose one of ARS, ASEBO, "),
    "unknown_method": ({"merge": {"method": "dare"}},
                       "'dare' cannot be evolved; parameter-space evolution supports: "
                       "task_arithmetic, ties, dare_ties"),
    "not_in_genomes": ({"merge": {"method": "nearswap"}}, "'nearswap' cannot be evolved"),
    "slerp_evolves_t": ({"merge": {"method": "slerp"}},
                        "'slerp' has no parameter 'weight' to evolve; it evolves: t"),
    "missing_param": ({"merge": {"method": "task_arithmetic", "evolve": ["weight", "density"]}},
                      "'task_arithmetic' has no parameter 'density' to evolve; it evolves: "
                      "weight, lambda"),
    "switch_evolved": ({"merge": {"evolve": ["normalize"]}}, "'normalize' is a boolean switch"),
    "bad_bounds": ({"merge": {"bounds": {"weight": [1, 0]}}}, r"merge.bounds.weight: need finite"),
    "unknown_key": ({"strategy": {"sigmaa": 0.1}}, "strategy.sigmaa: unknown key"),
    "stray_task_key": ({"tasks": [{**BASE["tasks"][0], "choices": "c"}]},
                       "key\\(s\\) choices do not apply to type 'exact_match'"),
    "dfs_one_model": ({"search": "dfs"}, "search dfs needs models A and B"),
    "dfs_under_ps": ({"dfs": {"repeats": 2}}, "the dfs section applies to search dfs or ps\\+dfs"),
    "dfs_repeats": ({"search": "dfs", "dfs": {"a": "a", "b": "b", "repeats": 0}},
                    "dfs.repeats \\(r\\) must be at least 1"),
}


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors(case):
    change, message = CONFIG_ERRORS[case]
    with pytest.raises(ConfigError, match=message):
        parse_config({**BASE, **change}, "cfg.yml")


def test_unknown_strategy_from_the_cli(evolve_world, tmp_path, cli_error):
    cfg = standard_config(evolve_world, tmp_path / "cfg.yml", strategy={"name": "NoSuchES"})
    assert "unknown evosax algorithm 'NoSuchES'; choose one of" in cli_error(cfg)


def test_sources_that_differ_in_architecture_or_shape(evolve_world, tmp_path, cli_error):
    wide = save_with_tokenizer(make_model("llama", 1, hidden_size=48, num_attention_heads=4),
                               tmp_path / "wide")
    qwen = save_with_tokenizer(make_model("qwen2_bias_sliding", 1), tmp_path / "qwen")
    world = {**evolve_world, "sources": [evolve_world["sources"][0], wide, qwen]}
    err = cli_error(write_config(tmp_path / "cfg.yml", world, [echo_task(world)]))
    assert f"{wide} differs from base_model" in err and "hidden_size 48 vs 32" in err
    assert f"{qwen} differs" in err and "architecture 'Qwen2ForCausalLM' vs 'LlamaForCausalLM'" in err


def _with_files(world, tmp_path, **splits):
    files = dict(world["echo_files"])
    for split, records in splits.items():
        files[split] = str(write_jsonl(tmp_path / f"{split}.jsonl", records)) if records is not None \
            else str(tmp_path / "missing.jsonl")
    return write_config(tmp_path / "cfg.yml", world, [echo_task(world, data=files)])


def test_task_file_with_a_missing_field(evolve_world, tmp_path, cli_error):
    cfg = _with_files(evolve_world, tmp_path, validation=[{"prompt": "1 2", "target": "3"},
                                                          {"prompt": "1 2"}])
    assert f"{tmp_path / 'validation.jsonl'}:2: missing field 'target'" in cli_error(cfg)


def test_empty_split(evolve_world, tmp_path, cli_error):
    (tmp_path / "test.jsonl").write_text("\n")
    files = {**evolve_world["echo_files"], "test": str(tmp_path / "test.jsonl")}
    cfg = write_config(tmp_path / "cfg.yml", evolve_world, [echo_task(evolve_world, data=files)])
    assert f"task 'echo': test split {tmp_path / 'test.jsonl'} is empty" in cli_error(cfg)


def test_prompt_longer_than_the_context(evolve_world, tmp_path, cli_error):
    long = " ".join(["w1"] * 140)
    cfg = _with_files(evolve_world, tmp_path, fitness=[{"prompt": long, "target": "3"}])
    err = cli_error(cfg)
    assert f"{tmp_path / 'fitness.jsonl'}:1: prompt + target take 142 tokens, more than the " \
           "model's context of 128" in err


def test_bad_yaml_and_missing_file(tmp_path, cli_error):
    (tmp_path / "cfg.yml").write_text("tasks: [\n")
    assert "invalid YAML" in cli_error(tmp_path / "cfg.yml")
    assert "cannot read config" in cli_error(tmp_path / "nope.yml")
    (tmp_path / "cfg.yml").write_text(yaml.safe_dump({**BASE, "strategy": {"generations": 0}}))
    assert "strategy.generations: Input should be greater than 0" in cli_error(tmp_path / "cfg.yml")
