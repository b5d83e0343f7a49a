import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

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
