"""Evolution recovers a known optimum: the target is the task-arithmetic merge of the two sources
with weights (0.3, 0.7), the fitness is agreement with the target's greedy outputs (exact match of
its 2-token continuations), and CMA-ES must find weights within 0.05 of the target's."""

import numpy as np
import torch
import transformers

from evolve_world import continuation_files, write_config
from evomerge_jax.searches.run import evolve
from tiny_models import make_model

TRUE_WEIGHTS = (0.3, 0.7)
TOLERANCE = 0.05


def _target_model(world):
    load = lambda p: transformers.AutoModelForCausalLM.from_pretrained(p).state_dict()  # noqa
    base, sources = load(world["base"]), [load(p) for p in world["sources"]]
    target = make_model("llama", 0)
    target.load_state_dict({k: base[k] + sum(w * (s[k] - base[k])
                                             for w, s in zip(TRUE_WEIGHTS, sources))
                            for k in base})
    return target.eval()


def test_evolution_recovers_known_merge_weights(evolve_world, tmp_path):
    with torch.no_grad():
        files = continuation_files(_target_model(evolve_world), tmp_path / "agree",
                                   sizes=(64, 32, 32), seed=9)
    task = {"name": "agree", "type": "exact_match", "data": files, "prompt": "{prompt}",
            "target": "{target}", "append_eos": False, "batch_size": 64}
    cfg = write_config(tmp_path / "cfg.yml", evolve_world, [task],
                       merge={"method": "task_arithmetic", "evolve": ["weight"]},
                       grouping={"layers": "all", "globals": "nearest"},
                       strategy={"name": "CMA_ES", "population_size": 8, "generations": 8,
                                 "sigma": 0.2, "seed": 1})
    results = evolve(cfg, progress=False, log=lambda *_: None, export=False)
    weights = np.asarray(results["best"]["recipe"]["values"]["weight"])[0]
    assert np.abs(weights - TRUE_WEIGHTS).max() < TOLERANCE, weights
    assert results["scores"]["evolved"]["test"]["agree"]["acc"] >= 0.9
