"""PS+DFS evolves a merge of each family end to end (both stages: PS over a base and two
fine-tunes, then DFS over the PS model and a source), and each stage's best scores the same inside
the population pass as its exported HF dir scores alone through the plain decoder (which matches
transformers: test_families_forward.py). The DFS best is exported through the family's fold
(design.md §4.1).

Each run compiles a PS and a DFS pass (a minute of CPU or more), so the suite runs one: Mixtral
(task arithmetic, one generation per stage: the routed MLP in the PS layer scan and the DFS slots,
the experts' fold at export). `EVOMERGE_FAMILY_EVOLVE=all` adds Gemma 2 (task arithmetic, one
generation) and Gemma 3 and Phi-3 with DARE-TIES over two generations per stage (random masks
recomputed at export), as README reports; the Gemma folds are also checked without a search by
test_families_dfs.py."""

import copy
import json
import os

import pytest
import torch
import transformers
from evolve_world import WORDS, continuation_files, write_config
from family_models import make_family_model

from evomerge_jax.searches.run import eval_model, evolve
from evomerge_jax.tokenizer_build import build_word_tokenizer

QUIET = dict(progress=False, log=lambda *_: None)
# family model -> (PS merge method, generations per stage, HF architecture)
ALL_RUNS = {"gemma2_softcap": ("task_arithmetic", 1, "Gemma2ForCausalLM"),
            "mixtral_top2": ("task_arithmetic", 1, "MixtralForCausalLM"),
            "gemma3_local_rope": ("dare_ties", 2, "Gemma3ForCausalLM"),
            "phi3_longrope": ("dare_ties", 2, "Phi3ForCausalLM")}
SUITE_RUNS = ("mixtral_top2",)
RUNS = {k: v for k, v in ALL_RUNS.items()
        if os.environ.get("EVOMERGE_FAMILY_EVOLVE") == "all" or k in SUITE_RUNS}


def _save(model, path):
    model.save_pretrained(path, safe_serialization=True)
    build_word_tokenizer(WORDS, path, vocab_size=model.config.vocab_size)
    return path


@pytest.fixture(scope="module", params=list(RUNS))
def family_run(request, tmp_path_factory):
    name = request.param
    root = tmp_path_factory.mktemp(f"{name}_evolve")
    base = make_family_model(name, 50)
    world = {"base": _save(base, root / "base"), "sources": []}
    for k in range(2):
        variant = copy.deepcopy(base)
        gen = torch.Generator().manual_seed(k)
        with torch.no_grad():
            for p in variant.parameters():
                p.add_(0.3 * p.std() * torch.randn(p.shape, generator=gen))
        world["sources"].append(_save(variant, root / f"src{k}"))
    with torch.no_grad():
        files = continuation_files(base, root / "agree", sizes=(16, 8, 8), seed=3)
    # perplexity only: an exact-match task would compile a population generation loop per stage
    tasks = [{"name": "ppl", "type": "perplexity", "data": files, "prompt": "{prompt}",
              "target": "{target}", "batch_size": 16}]
    method, generations, _ = RUNS[name]
    evolved = ["weight"] + (["density"] if method == "dare_ties" else [])
    cfg = write_config(root / "cfg.yml", world, tasks, search="ps+dfs",
                       merge={"method": method, "evolve": evolved},
                       strategy={"population_size": 4, "generations": generations, "seed": 0},
                       dfs={"b": str(world["sources"][1]),
                            "strategy": {"name": "CMA_ES", "population_size": 4,
                                         "generations": generations, "seed": 0}})
    evolve(cfg, export=True, **QUIET)
    return name, cfg, root / "run"


@pytest.mark.parametrize("stage,model", [("ps", "model"), ("dfs", "best")])
def test_stage_best_scores_alone_as_in_the_pass(family_run, stage, model):
    name, cfg, run = family_run
    inside = json.loads((run / stage / "best.json").read_text())["validation"]
    scores = eval_model(run / stage / model, cfg, ("validation",), log=lambda *_: None)
    alone = scores["validation"]["ppl"]["score"]
    assert abs(inside - alone) < 1e-4, (name, stage, inside, alone)
    hf = transformers.AutoConfig.from_pretrained(run / stage / model)
    assert hf.architectures == [RUNS[name][2]]
    if stage == "dfs":
        steps = json.loads((run / "dfs" / model / "path.json").read_text())["num_steps"]
        assert hf.num_hidden_layers == steps
        if getattr(hf, "layer_types", None) is not None:
            assert len(hf.layer_types) == steps
