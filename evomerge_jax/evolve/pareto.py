"""NSGA-II's maths (Deb et al. 2002), jitted: the non-dominated sort, the crowding distance, the
(mu + lambda) selection, the binary tournament and the variation operators (simulated binary
crossover and polynomial mutation) over genomes in [0, 1]^D.

Objectives are maximised: a point dominates another when it is at least as good on every
objective and better on one. Non-finite objective values must be replaced before (see `finite`):
they rank last.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def finite(objectives: np.ndarray) -> np.ndarray:
    """[N, M] with every point that has a non-finite value moved to (each objective's worst finite
    value − 1) on every objective, so that it ranks last (every finite point dominates it) and
    the distances stay finite."""
    f = np.asarray(objectives, np.float64)
    ok = np.isfinite(f).all(axis=1)
    worst = f[ok].min(axis=0) - 1.0 if ok.any() else np.zeros(f.shape[1])
    return np.where(ok[:, None], f, worst[None, :])


def dominates(objectives):
    """[N, N] bool: entry (i, j) is whether point i dominates point j."""
    f = jnp.asarray(objectives)
    at_least = (f[:, None, :] >= f[None, :, :]).all(-1)
    better = (f[:, None, :] > f[None, :, :]).any(-1)
    return at_least & better


@jax.jit
def ranks(objectives):
    """The front of each point [N] int32: 0 for the non-dominated points, 1 for those left
    non-dominated once front 0 is removed, and so on."""
    dom = dominates(objectives)
    n = dom.shape[0]

    def peel(state):
        rank, front_no, left = state
        dominated = (dom & left[:, None]).any(axis=0)
        front = left & ~dominated
        return jnp.where(front, front_no, rank), front_no + 1, left & ~front

    rank, _, _ = jax.lax.while_loop(lambda s: s[2].any(), peel,
                                    (jnp.full(n, n, jnp.int32), jnp.int32(0), jnp.ones(n, bool)))
    return rank


@jax.jit
def crowding(objectives, rank):
    """The crowding distance of each point within its front [N]: the two extreme points of each
    objective get infinity, the others the sum over objectives of the gap between their two
    neighbours divided by the front's range on that objective."""
    f = jnp.asarray(objectives)
    n = f.shape[0]

    def one(values):
        order = jnp.lexsort((values, rank))
        v, r = values[order], rank[order]
        lo = jax.ops.segment_min(values, rank, num_segments=n + 1)[r]
        hi = jax.ops.segment_max(values, rank, num_segments=n + 1)[r]
        inner = jnp.concatenate([jnp.array([False]), r[1:] == r[:-1]]) & jnp.concatenate(
            [r[:-1] == r[1:], jnp.array([False])])
        gap = jnp.concatenate([v[:1], v[2:] - v[:-2], v[-1:]])
        span = hi - lo
        d = jnp.where(inner, gap / jnp.where(span > 0, span, 1.0), jnp.inf)
        return jnp.zeros(n, f.dtype).at[order].set(d)

    return jax.vmap(one, in_axes=1)(f).sum(axis=0)


def select(objectives: np.ndarray, count: int) -> np.ndarray:
    """NSGA-II's survivors: the indices of `count` points, by front and then by crowding distance
    (largest first; ties by index)."""
    f = jnp.asarray(finite(objectives))
    rank = ranks(f)
    dist = crowding(f, rank)
    order = np.lexsort((np.arange(len(f)), -np.asarray(dist), np.asarray(rank)))
    return order[:count]


@partial(jax.jit, static_argnames=("count",))
def tournament(key, rank, dist, count: int):
    """`count` parents by binary tournament: the lower front wins, then the larger crowding
    distance, then the first drawn."""
    pairs = jax.random.randint(key, (count, 2), 0, rank.shape[0])
    a, b = pairs[:, 0], pairs[:, 1]
    a_wins = (rank[a] < rank[b]) | ((rank[a] == rank[b]) & (dist[a] >= dist[b]))
    return jnp.where(a_wins, a, b)


@partial(jax.jit, static_argnames=("eta_c", "eta_m", "p_cross"))
def vary(key, parents, eta_c: float = 15.0, eta_m: float = 20.0, p_cross: float = 0.9):
    """Children [P, D] of parents [P, D] (paired in order: 0 with 1, 2 with 3, ...; P even):
    simulated binary crossover (each gene swapped-and-spread with probability 1/2, the pair
    crossed with probability `p_cross`), then polynomial mutation of each gene with probability
    1/D, both over [0, 1], the children clipped into it."""
    p, d = parents.shape
    k_cross, k_gene, k_u, k_mut, k_v = jax.random.split(key, 5)
    x1, x2 = parents[0::2], parents[1::2]
    u = jax.random.uniform(k_u, x1.shape)
    beta = jnp.where(u <= 0.5, (2 * u) ** (1 / (eta_c + 1)),
                     (1 / (2 * (1 - u))) ** (1 / (eta_c + 1)))
    crossed = (jax.random.uniform(k_cross, (p // 2, 1)) < p_cross) & (
        jax.random.uniform(k_gene, x1.shape) < 0.5)
    c1 = jnp.where(crossed, 0.5 * ((1 + beta) * x1 + (1 - beta) * x2), x1)
    c2 = jnp.where(crossed, 0.5 * ((1 - beta) * x1 + (1 + beta) * x2), x2)
    children = jnp.stack([c1, c2], axis=1).reshape(p, d)
    v = jax.random.uniform(k_v, children.shape)
    delta = jnp.where(v < 0.5, (2 * v) ** (1 / (eta_m + 1)) - 1,
                      1 - (2 * (1 - v)) ** (1 / (eta_m + 1)))
    mutate = jax.random.uniform(k_mut, children.shape) < 1.0 / d
    return jnp.clip(jnp.where(mutate, children + delta, children), 0.0, 1.0)


def front(objectives: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points, in index order."""
    return np.flatnonzero(np.asarray(ranks(jnp.asarray(finite(objectives)))) == 0)
