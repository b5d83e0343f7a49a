"""Every path-taking command run the way a user runs it: from a working directory that is neither
the repo root nor the config's folder, with relative paths. Merge configs resolve model paths
against the working directory (as mergekit does); evolve configs against the YAML's own folder.
(`evomerge demo` with its default relative `--out` runs in tests/test_demo.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers
import yaml

import evomerge_jax as em
from evomerge_jax.cli import main
from merge_models import tensors


@pytest.fixture(scope="module")
def project(evolve_world, tmp_path_factory):
    """tmp/work/models/{base,src0,src1}, tmp/work/tasks/echo, and tmp/cfgs/ps.yml whose paths are
    relative to tmp/cfgs. Tests chdir to tmp/work."""
    root = tmp_path_factory.mktemp("relative")
    work, cfgs = root / "work", root / "cfgs"
    for name, src in [("base", evolve_world["base"]), ("src0", evolve_world["sources"][0]),
                      ("src1", evolve_world["sources"][1])]:
        shutil.copytree(src, work / "models" / name)
    for split, path in evolve_world["echo_files"].items():
        (work / "tasks" / "echo").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, work / "tasks" / "echo" / f"{split}.jsonl")
    cfgs.mkdir()
    cfg = {"base_model": "../work/models/base",
           "models": ["../work/models/src0", "../work/models/src1"],
           "strategy": {"population_size": 4, "generations": 1, "seed": 0},
           "tasks": [{"name": "echo", "type": "exact_match", "prompt": "{prompt}",
                      "target": "{target}", "append_eos": False, "batch_size": 8,
                      "data": {s: f"../work/tasks/echo/{s}.jsonl"
                               for s in ("fitness", "validation", "test")}}],
           "output_dir": "run", "baselines": False}
    (cfgs / "ps.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@pytest.fixture
def in_work(project, monkeypatch):
    monkeypatch.chdir(project / "work")
    return project


def test_info_relative(in_work, capsys):
    assert main(["info", "models/base"]) == 0
    out = capsys.readouterr().out
    assert "LlamaForCausalLM" in out or "llama" in out


def test_merge_relative_model_paths_and_out(in_work):
    Path("recipes").mkdir(exist_ok=True)
    Path("recipes/linear.yml").write_text(yaml.safe_dump({
        "merge_method": "linear", "dtype": "float32",
        "models": [{"model": "models/src0", "parameters": {"weight": 1.0}},
                   {"model": "models/src1", "parameters": {"weight": 3.0}}]}))
    assert main(["merge", "recipes/linear.yml", "merged", "--quiet"]) == 0
    ours, a, b = tensors(Path("merged")), tensors(Path("models/src0")), tensors(Path("models/src1"))
    assert sorted(ours) == sorted(a)
    for name in ours:  # float64 reference: linear normalises the weights (1 + 3)
        np.testing.assert_allclose(ours[name], (a[name] + 3 * b[name]) / 4, rtol=0, atol=2e-7)
    # the public API does what the command does
    assert em.merge("recipes/linear.yml", "merged_api") == Path("merged_api")
    api = tensors(Path("merged_api"))
    assert all(np.array_equal(api[n], ours[n]) for n in ours)


def test_evolve_export_eval_plan_relative(in_work, capsys):
    config = "../cfgs/ps.yml"
    cfg = em.load_evolve_config(config)
    assert cfg.output_dir == in_work / "cfgs" / "run" and cfg.base_model.is_dir()
    assert main(["plan", config, "--device-memory", "8GB"]) == 0
    assert "candidates" in capsys.readouterr().out.lower()
    assert main(["evolve", config]) == 0
    run = in_work / "cfgs" / "run"  # output_dir is relative to the config's folder
    results = json.loads((run / "results.json").read_text())
    assert not Path("run").exists()

    assert main(["export", "../cfgs/run", "exported"]) == 0
    model = transformers.AutoModelForCausalLM.from_pretrained("exported")
    assert model.config.num_hidden_layers == 3
    np.testing.assert_array_equal(tensors(Path("exported"))["model.embed_tokens.weight"],
                                  tensors(run / "best")["model.embed_tokens.weight"])

    capsys.readouterr()
    assert main(["eval", "exported", "--config", config, "--split", "test"]) == 0
    printed = capsys.readouterr().out
    # the exported model scores what the run scored its best in the population pass
    assert f"{results['scores']['evolved']['test']['echo']['acc']:.4f}" in printed
    # the task's targets are the base's own greedy continuations: it scores 1
    assert main(["eval", "models/base", "--config", config, "--split", "test"]) == 0
    assert "1.0000" in capsys.readouterr().out


def test_copied_config_fails_in_one_line(in_work, cli_error):
    moved = in_work / "elsewhere" / "deeper" / "ps.yml"  # ../work/models/base is not there
    moved.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(in_work / "cfgs" / "ps.yml", moved)
    err = cli_error(moved)
    assert "models/base" in err
