"""Searches recover a known optimum: the target is the task-arithmetic merge of the two sources
with weights (0.3, 0.7), the fitness is agreement with the target's greedy outputs (exact match of
its 2-token continuations). CMA-ES must find weights within 0.05 of the target's; the gradient
search (Adam on the targets' NLL, through the merge and the forward pass) must too, in far fewer
forward passes than CMA-ES spent to get there (both counted from the runs' log.jsonl)."""

import json

import numpy as np
import pytest
import torch
import transformers

from evolve_world import continuation_files, write_config
from evomerge_jax.searches.run import evolve
from tiny_models import make_model

TRUE_WEIGHTS = (0.3, 0.7)
TOLERANCE = 0.05
# The gradient search must reach the tolerance in at most 1/RATIO of CMA-ES's forward passes.
RATIO = 3


def _target_model(world):
    load = lambda p: transformers.AutoModelForCausalLM.from_pretrained(p).state_dict()  # noqa
    base, sources = load(world["base"]), [load(p) for p in world["sources"]]
    target = make_model("llama", 0)
    target.load_state_dict({k: base[k] + sum(w * (s[k] - base[k])
                                             for w, s in zip(TRUE_WEIGHTS, sources))
                            for k in base})
    return target.eval()


@pytest.fixture(scope="module")
def agree(evolve_world, tmp_path_factory):
    """The task on the target's continuations and a config writer (PS settings of the test)."""
    root = tmp_path_factory.mktemp("optimum")
    with torch.no_grad():
        files = continuation_files(_target_model(evolve_world), root / "agree",
                                   sizes=(64, 32, 32), seed=9)
    task = {"name": "agree", "type": "exact_match", "data": files, "prompt": "{prompt}",
            "target": "{target}", "append_eos": False, "batch_size": 64}

    def config(name, **sections):
        (root / name).mkdir()
        return write_config(root / name / "cfg.yml", evolve_world, [task],
                            merge={"method": "task_arithmetic", "evolve": ["weight"]},
                            grouping={"layers": "all", "globals": "nearest"}, **sections)

    return config


@pytest.fixture(scope="module")
def cma_es(agree):
    cfg = agree("cma", strategy={"name": "CMA_ES", "population_size": 8, "generations": 8,
                                 "sigma": 0.2, "seed": 1})
    results = evolve(cfg, progress=False, log=lambda *_: None, export=False)
    return results, _log(cfg)


def _log(cfg) -> list[dict]:
    return [json.loads(line) for line in (cfg.parent / "run" / "log.jsonl").open()]


def _weights(results) -> np.ndarray:
    return np.asarray(results["best"]["recipe"]["values"]["weight"])[0]


def _within(genome) -> bool:
    return np.abs(np.asarray(genome) - TRUE_WEIGHTS).max() < TOLERANCE  # bounds [0, 1]: genes


def cma_es_passes_to_tolerance(lines) -> int | None:
    """Candidate passes (each candidate's fitness batch, and the validation batch of each
    generation's best) until a generation's best is within the tolerance."""
    passes = 0
    for line in lines:
        passes += line["population"] + 1  # the validation split is one batch
        if _within(line["generation_best"]["genome"]):
            return passes
    return None


def gradient_passes_to_tolerance(lines) -> int | None:
    return next((line["forward_passes"] for line in lines if _within(line["genome"])), None)


def test_evolution_recovers_known_merge_weights(cma_es):
    results, _ = cma_es
    weights = _weights(results)
    assert np.abs(weights - TRUE_WEIGHTS).max() < TOLERANCE, weights
    assert results["scores"]["evolved"]["test"]["agree"]["acc"] >= 0.9


GRADIENT = {"search": "gradient", "strategy": {"seed": 1},
            "gradient": {"loss": "nll", "steps": 6, "learning_rate": 0.05}}


@pytest.fixture(scope="module")
def gradient(agree):
    cfg = agree("gradient", **GRADIENT)
    return evolve(cfg, progress=False, log=lambda *_: None, export=False), _log(cfg)


def test_gradient_search_recovers_them_in_far_fewer_passes(gradient, cma_es):
    results, lines = gradient
    weights = _weights(results)
    assert np.abs(weights - TRUE_WEIGHTS).max() < TOLERANCE, weights  # the best on validation
    assert results["scores"]["evolved"]["test"]["agree"]["acc"] >= 0.9
    assert [line["step"] for line in lines] == list(range(6))
    assert lines[-1]["loss"] < lines[0]["loss"]  # Adam descends the NLL
    gradient = gradient_passes_to_tolerance(lines)
    cma = cma_es_passes_to_tolerance(cma_es[1])
    print(f"forward passes to within {TOLERANCE}: gradient {gradient}, CMA-ES {cma}, "
          f"ratio {cma / gradient:.1f}")
    assert gradient is not None and cma is not None
    assert gradient * RATIO <= cma, (gradient, cma)


class _Stop(Exception):
    pass


def test_gradient_run_stopped_and_resumed_replays_the_same_steps(agree, gradient):
    cfg = agree("resumed", **GRADIENT)

    def stop(step, line):
        if step == 2:
            raise _Stop

    with pytest.raises(_Stop):
        evolve(cfg, progress=False, log=lambda *_: None, export=False, on_generation=stop)
    results = evolve(cfg, resume=True, progress=False, log=lambda *_: None, export=False)
    strip = lambda line: {k: v for k, v in line.items() if k != "seconds"}
    assert [strip(x) for x in _log(cfg)] == [strip(x) for x in gradient[1]]
    assert results["best"] == gradient[0]["best"]


def test_hybrid_evolves_lambda_around_learned_weights(agree):
    """gradient.evolve: CMA-ES evolves task arithmetic's lambda (one gene) while Adam learns the
    weights of each candidate; the best's effective coefficients lambda·w recover the target's
    (0.3, 0.7)."""
    import yaml
    cfg = agree("hybrid", search="gradient",
                strategy={"name": "CMA_ES", "population_size": 3, "generations": 2,
                          "sigma": 0.2, "seed": 1},
                gradient={"loss": "nll", "steps": 6, "learning_rate": 0.05,
                          "evolve": ["lambda"]})
    data = yaml.safe_load(cfg.read_text())
    data["merge"]["evolve"] = ["weight", "lambda"]
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    results = evolve(cfg, progress=False, log=lambda *_: None, export=False)
    lines = _log(cfg)
    assert [line["population"] for line in lines] == [3, 3]
    lambdas = np.asarray([line["evolved_genes"] for line in lines])[..., 0] * 2  # bounds [0, 2]
    assert np.ptp(lambdas) > 0.05, lambdas  # the strategy moves lambda
    values = results["best"]["recipe"]["values"]
    effective = np.asarray(values["weight"])[0] * values["lambda"][0]
    assert np.abs(effective - TRUE_WEIGHTS).max() < 2 * TOLERANCE, (values, effective)
    print(f"hybrid: lambda {values['lambda'][0]:.3f}, effective {effective.round(3).tolist()}, "
          f"test acc {results['scores']['evolved']['test']['agree']['acc']:.4f}")
    assert lines[-1]["forward_passes"] == 2 * (3 * (6 + 1) + 1)
