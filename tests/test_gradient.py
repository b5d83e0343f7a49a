"""`search: gradient`'s pieces that need no run: the losses against a float64 reference, the rows'
weights (each task's mean, weighted), and the config's one-line errors. The run itself, against a
known optimum and CMA-ES, is in test_evolve_optimum.py."""

import numpy as np
import pytest

from evomerge_jax.evolve.gradient_loss import batch_loss


def _reference(logits, rows, loss):
    x = logits.astype(np.float64)
    logp = x - x.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    total = 0.0
    for b in range(len(x)):
        at = np.flatnonzero(rows["scored"][b])
        if not len(at):
            continue
        if loss == "nll":
            value = -sum(logp[b, s, rows["labels"][b, s]] for s in at)
        else:
            p = np.exp(logp[b, at[0]])
            value = -(p * logp[b, at[0]]).sum()
        total += rows["row_weight"][b] * value
    return total


@pytest.mark.parametrize("loss", ["nll", "entropy"])
def test_losses_match_a_float64_reference(loss):
    rng = np.random.default_rng(0)
    b, s, v = 5, 7, 11
    logits = rng.normal(size=(b, s, v)).astype(np.float32) * 3
    scored = np.zeros((b, s), bool)
    for i, (lo, hi) in enumerate([(2, 5), (0, 7), (3, 4), (0, 0), (5, 7)]):
        scored[i, lo:hi] = True
    rows = {"scored": scored, "labels": rng.integers(0, v, (b, s)).astype(np.int32),
            "row_weight": rng.uniform(0.1, 1.0, b).astype(np.float32)}
    got = float(batch_loss(logits, rows, loss))
    np.testing.assert_allclose(got, _reference(logits, rows, loss), rtol=1e-5)


def test_entropy_reads_only_the_prompt():
    """The entropy row's first scored position predicts the first target token: changing the
    target's logits beyond it leaves the loss unchanged (labels unused)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 6, 9)).astype(np.float32)
    scored = np.zeros((2, 6), bool)
    scored[:, 2:5] = True
    rows = {"scored": scored, "labels": np.zeros((2, 6), np.int32),
            "row_weight": np.ones(2, np.float32)}
    other = logits.copy()
    other[:, 3:] = rng.normal(size=other[:, 3:].shape)
    assert float(batch_loss(logits, rows, "entropy")) == float(batch_loss(other, rows, "entropy"))
    rows2 = {**rows, "labels": np.full((2, 6), 4, np.int32)}
    assert float(batch_loss(logits, rows2, "entropy")) == float(batch_loss(logits, rows,
                                                                            "entropy"))


@pytest.mark.parametrize("change, message", [
    ({"search": "ps", "gradient": {"steps": 3}}, "applies to search gradient only"),
    ({"strategy": {"name": "CMA_ES"}}, "strategy.name does not apply"),
    ({"gradient": {"loss": "mse"}}, "gradient.loss"),
    ({"gradient": {"learning_rate": 0}}, "gradient.learning_rate"),
    ({"gradient": {"epochs": 3}}, "gradient.epochs: unknown key"),
    ({"gradient": {"evolve": ["lambda"]}}, "gradient.evolve: lambda not among merge.evolve"),
    ({"gradient": {"evolve": ["weight", "density"]}, "strategy": {"name": "CMA_ES"}},
     "names every evolved parameter"),
])
def test_bad_gradient_configs_are_one_line_errors(change, message):
    from evomerge_jax.errors import ConfigError
    from evomerge_jax.evolve.config import parse_config
    files = {"fitness": "f", "validation": "v", "test": "t"}
    data = {"search": "gradient", "base_model": "b", "models": ["m"], "output_dir": "o",
            "tasks": [{"name": "a", "type": "perplexity", "data": files, "prompt": "{p}",
                       "target": "{t}"}], **change}
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_tasks_without_one_target_are_refused(evolve_world, tmp_path, cli_error):
    from evolve_world import echo_task, write_config
    task = echo_task(evolve_world, type="generate", name="gen")
    task.pop("append_eos")
    cfg = write_config(tmp_path / "cfg.yml", evolve_world, [task], search="gradient",
                       strategy={"seed": 0}, merge={"method": "task_arithmetic",
                                                    "evolve": ["weight"]})
    assert "search gradient learns from tasks of type exact_match or perplexity; not gen " \
           "(generate)" in cli_error(cfg)
