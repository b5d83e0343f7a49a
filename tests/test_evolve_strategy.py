"""evosax 0.3 strategies through `build_strategy`: every registered algorithm builds (or says which
option it needs), sigma reaches its step size, ask/tell are keyed by (seed, generation)."""

import numpy as np
import pytest

from evomerge_jax.errors import ConfigError
from evomerge_jax.evolve.config_sections import StrategySection
from evomerge_jax.evolve.strategy import algorithms, build_strategy

NEEDS_OPTIONS = {"SV_CMA_ES": {"num_populations": 2}, "SV_Open_ES": {"num_populations": 2}}
# Algorithms whose generation 0 does not spread by strategy.sigma today (evosax 0.3 behaviour the
# engine does not correct); strict, so a fix shows up as an unexpected pass.
SIGMA_FAULTS = {
    "xNES": "evosax starts both std and B at std_init: generation 0 spreads by sigma squared",
    "iAMaLGaM_Full": "evosax starts C at the identity: generation 0 spreads by sqrt(1 + sigma^2)",
    "iAMaLGaM_Univariate": "evosax starts C at the identity: generation 0 spreads by "
                           "sqrt(1 + sigma^2)",
    "SV_CMA_ES": "ask fails: the algorithm wants one mean per population, the search passes [D]",
    "SV_Open_ES": "ask fails: the algorithm wants one mean per population, the search passes [D]",
}


def _generation_zero(name: str, sigma: float):
    """(strategy, generation 0's offsets from the mean [8, 6]) with `sigma`, seed 0."""
    cfg = StrategySection(name=name, population_size=8, sigma=sigma,
                          options=NEEDS_OPTIONS.get(name, {}))
    strategy = build_strategy(cfg, 6)
    mean = np.full(6, 0.5, np.float32)
    population, _ = strategy.ask(0, 0, strategy.init(0, mean), mean)
    assert population.shape == (8, 6) and np.all(np.isfinite(population))
    return strategy, population - mean


@pytest.mark.parametrize("name", sorted(algorithms()))
def test_every_algorithm_builds(name):
    cfg = StrategySection(name=name, population_size=8, sigma=0.2)
    if name in NEEDS_OPTIONS:
        with pytest.raises(ConfigError, match=f"cannot build {name}"):
            build_strategy(cfg, 6)
        cfg = StrategySection(name=name, population_size=8, sigma=0.2, options=NEEDS_OPTIONS[name])
    strategy = build_strategy(cfg, 6)
    assert strategy.algo.population_size == 8 and strategy.sigma == 0.2
    fields = getattr(strategy.params, "__dataclass_fields__", {})
    if "std_init" in fields:
        assert float(strategy.params.std_init) == pytest.approx(0.2)
    if "std_schedule" in vars(strategy.algo):
        assert float(strategy.algo.std_schedule(0)) == pytest.approx(0.2)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=SIGMA_FAULTS[n]))
    if n in SIGMA_FAULTS else n for n in sorted(algorithms())])
def test_sigma_sets_the_spread_of_generation_zero(name):
    """Same seed, sigma doubled: every offset from the mean doubles exactly (the draws are the
    same, only the step size differs); an algorithm without a step size says so and ignores
    sigma."""
    strategy, small = _generation_zero(name, 0.2)
    _, large = _generation_zero(name, 0.4)
    assert np.any(small != 0)
    if any("has no step size" in note for note in strategy.notes):
        np.testing.assert_array_equal(large, small)
    else:
        np.testing.assert_allclose(large, 2 * small, rtol=1e-5, atol=1e-6)


def test_population_based_ask_tell_is_keyed_by_seed_and_generation():
    """Replaying the same (seed, generation) sequence gives the same populations exactly, for a
    population-based algorithm, whose generation 0 is `init` on an evaluated population (CMA-ES
    replays are covered by the resume test)."""
    cfg = StrategySection(name="SimpleGA", population_size=8, sigma=0.2, seed=3)
    strategy = build_strategy(cfg, 5)
    runs = []
    for _ in range(2):
        mean = np.full(5, 0.5, np.float32)
        state, history = strategy.init(cfg.seed, mean), []
        for generation in range(3):
            population, asked = strategy.ask(cfg.seed, generation, state, mean)
            loss = ((population - 0.2) ** 2).sum(axis=1)
            state = strategy.tell(cfg.seed, generation, asked, population, loss)
            history.append(population)
        runs.append(np.stack(history))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert runs[0].shape == (3, 8, 5)


def test_bad_options_and_params():
    with pytest.raises(ConfigError, match="CMA_ES takes no option 'foo'"):
        build_strategy(StrategySection(options={"foo": 1}), 4)
    with pytest.raises(ConfigError, match="CMA_ES has no parameter 'bar'; parameters: std_init"):
        build_strategy(StrategySection(params={"bar": 1}), 4)
    params = build_strategy(StrategySection(params={"std_min": 0.01}), 4).params
    assert float(params.std_min) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["CMA_ES", "SimpleGA"])
def test_include_mean_scores_the_initial_mean_in_generation_zero(name):
    """With include_mean, generation 0's first candidate is the mean itself (a DFS mean decodes
    to model A); later generations are the algorithm's own draws; without it, no candidate is."""
    mean = np.asarray([0.1, 0.9, 0.3, 0.7], np.float32)
    plain = build_strategy(StrategySection(name=name, population_size=6, sigma=0.2, seed=1), 4)
    drawn, _ = plain.ask(1, 0, plain.init(1, mean), mean)
    assert not np.any(np.all(drawn == mean, axis=1))
    cfg = StrategySection(name=name, population_size=6, sigma=0.2, seed=1, include_mean=True)
    strategy = build_strategy(cfg, 4)
    state = strategy.init(cfg.seed, mean)
    population, asked = strategy.ask(cfg.seed, 0, state, mean)
    np.testing.assert_array_equal(population[0], mean)
    np.testing.assert_array_equal(population[1:], drawn[1:])
    state = strategy.tell(cfg.seed, 0, asked, population, np.arange(6, dtype=np.float32))
    later, _ = strategy.ask(cfg.seed, 1, state, mean)
    assert not np.any(np.all(later == mean, axis=1))
