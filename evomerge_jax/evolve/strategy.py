"""evosax 0.3 strategies behind one interface: build any algorithm by name, then `ask`/`tell` with
keys derived from (seed, generation), so a run resumed from a checkpoint draws what an
uninterrupted one would.

evosax minimises; the search passes the negated score. Distribution-based algorithms start from
`init(key, mean, params)`; population-based ones need an evaluated population to start from, so
their generation 0 is an initial population drawn around the mean with the configured sigma, and
`tell` of generation 0 calls `init`.

With `strategy.include_mean`, generation 0 scores the initial mean itself as its first candidate
(the rest are the algorithm's draws), so that the start is always a candidate for the best: a DFS
genome's mean decodes to model A exactly, and in ps+dfs model A is the PS stage's result.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..errors import ConfigError
from ..parallel.seeds import STRATEGY_STREAM

# Constructor arguments the search fills itself; `strategy.options` may set any other scalar one.
_RESERVED = {"self", "population_size", "solution", "fitness_shaping_fn", "metrics_fn",
             "std_schedule", "sampling_fn", "params", "params_path"}


@functools.cache
def _evosax():
    """(evosax's algorithm registry, its population-based base class), imported on first use and
    not with this module: importing evosax builds arrays, which starts JAX's backend, and a
    multi-process run must call `jax.distributed.initialize` before anything does that
    (parallel/distributed.py)."""
    from evosax.algorithms import algorithms as registry
    from evosax.algorithms.population_based.base import PopulationBasedAlgorithm

    return registry, PopulationBasedAlgorithm


def algorithms() -> dict:
    """evosax's algorithms by name."""
    return dict(_evosax()[0])


@dataclass
class Strategy:
    algo: object
    params: object
    population_based: bool
    sigma: float
    notes: tuple[str, ...] = ()
    include_mean: bool = False

    def _key(self, seed: int, generation: int, use: int):
        key = jax.random.fold_in(jax.random.key(seed), STRATEGY_STREAM)
        return jax.random.fold_in(jax.random.fold_in(key, generation + 1), use)

    def init(self, seed: int, mean: np.ndarray):
        """The state before generation 0 (None for population-based algorithms: see `tell`)."""
        if self.population_based:
            return None
        return _settled(self.algo.init(self._key(seed, -1, 0), jnp.asarray(mean, jnp.float32),
                                       self.params))

    def ask(self, seed: int, generation: int, state, mean: np.ndarray):
        """Population [P, D] and the state to pass to `tell`."""
        key = self._key(seed, generation, 0)
        if state is None:
            noise = jax.random.normal(key, (self.algo.population_size, len(mean)))
            population = np.array(jnp.asarray(mean) + self.sigma * noise, np.float32)
        else:
            population, state = self.algo.ask(key, state, self.params)
            population = np.array(population, np.float32)
        if generation == 0 and self.include_mean:
            population[0] = np.asarray(mean, np.float32)
        return population, state

    def tell(self, seed: int, generation: int, state, population, loss):
        key = self._key(seed, generation, 1)
        population, loss = jnp.asarray(population), jnp.asarray(loss, jnp.float32)
        if state is None:
            return _settled(self.algo.init(key, population, loss, self.params))
        return self.algo.tell(key, population, loss, state, self.params)[0]


def _settled(state):
    """`init` leaves some float leaves weakly typed (from Python NaN or inf) where `tell` returns
    strong ones; fixing their types here spares a recompilation of ask/tell at generation 1."""
    return jax.tree.map(lambda x: jnp.asarray(x, x.dtype) if jnp.issubdtype(
        jnp.asarray(x).dtype, jnp.floating) else x, state)


def build_strategy(cfg, num_dims: int) -> Strategy:
    """An evosax algorithm from the `strategy` section, for genomes of `num_dims` genes."""
    registry = algorithms()
    name = cfg.name
    if name not in registry:
        raise ConfigError(f"strategy.name: unknown evosax algorithm {name!r}; choose one of "
                          f"{', '.join(sorted(registry, key=str.lower))}")
    cls = registry[name]
    population = cfg.population_for(num_dims)
    signature = inspect.signature(cls.__init__).parameters
    kwargs: dict = {}
    for key, value in cfg.options.items():
        if key not in signature or key in _RESERVED:
            usable = sorted(set(signature) - _RESERVED - {"optimizer", "kernel"})
            raise ConfigError(f"strategy.options.{key}: {name} takes no option {key!r}; "
                              f"options: {', '.join(usable) or 'none'}")
        kwargs[key] = value
    notes = []
    try:
        algo = _algorithm(name, population, num_dims, float(cfg.sigma),
                          tuple(sorted(kwargs.items())))
        params = algo.default_params
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"strategy: cannot build {name} with population {population} and "
                          f"options {cfg.options} ({' '.join(str(exc).split())})") from None
    fields = getattr(params, "__dataclass_fields__", {})
    updates = {}
    for key, value in cfg.params.items():
        if key not in fields:
            raise ConfigError(f"strategy.params.{key}: {name} has no parameter {key!r}; "
                              f"parameters: {', '.join(fields) or 'none'}")
        updates[key] = jnp.asarray(value, jnp.asarray(getattr(params, key)).dtype)
    if "std_init" in fields and "std_init" not in updates:
        updates["std_init"] = jnp.asarray(cfg.sigma, jnp.float32)
    params = params.replace(**updates) if updates else params
    population_based = isinstance(algo, _evosax()[1])
    if not population_based and "std_init" not in fields and "std_schedule" not in signature:
        notes.append(f"{name} has no step size: strategy.sigma is not used")
    return Strategy(algo, params, population_based, float(cfg.sigma), tuple(notes),
                    bool(cfg.include_mean))


@functools.lru_cache(maxsize=16)
def _algorithm(name: str, population: int, num_dims: int, sigma: float, options: tuple):
    """One evosax algorithm object per configuration: evosax jits `ask`/`tell` with the object as
    a static argument, so reusing it (a resumed run in the same process) reuses their compiled
    code. The objects hold configuration only; their state lives in the returned pytrees."""
    cls, kwargs = _evosax()[0][name], dict(options)
    signature = inspect.signature(cls.__init__).parameters
    if "std_schedule" in signature:
        kwargs["std_schedule"] = optax.constant_schedule(sigma)
    if "sampling_fn" in signature:  # RandomSearch: uniform over the genome box
        kwargs["sampling_fn"] = lambda key: jax.random.uniform(key, (num_dims,))
    return cls(population_size=population, solution=jnp.zeros(num_dims), **kwargs)


def losses(scores: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, int]:
    """Scores (higher is better) -> losses for evosax (lower is better). Non-finite scores, and
    candidates with non-finite genes (`valid` False), rank last: they get the worst finite loss
    plus one, so that no algorithm's fitness shaping sees NaN or infinity."""
    loss = -np.asarray(scores, np.float64)
    bad = ~np.isfinite(loss) | ~valid
    finite = loss[~bad]
    worst = (finite.max() + max(1.0, float(np.ptp(finite)))) if finite.size else 1.0
    return np.where(bad, worst, loss).astype(np.float32), int(bad.sum())
