"""M2N2's maths (Abrantes, Lange, Tang, Tian: "Competition and Attraction Improve Model Fusion",
GECCO 2025), on recipes (genomes) and per-example scores; pure numpy, float64.

Resources are the examples: `items[i, j]` in [0, 1] is candidate i's score on example j. An
archive's total on example j is z_j = sum_i items[i, j]; a candidate's shared fitness is
sum_j items[i, j] / (z_j + eps)^alpha, so an example every member solves is worth little and one
few solve is worth much (alpha = 0: the plain sum, no competition). The first parent is drawn in
proportion to shared fitness; the second in proportion to its attraction to the first,
sum_j max(items[k, j] - items[first, j], 0) / (z_j + eps): how much it holds of what the first
lacks, weighted by scarcity. A child takes w·A + (1 - w)·B on the genes before a split point and
(1 - w)·A + w·B after it, then gaussian mutation: each gene, with probability `rate`, moves by
N(0, scale²).
"""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def _clean(items) -> np.ndarray:
    return np.nan_to_num(np.asarray(items, np.float64), nan=0.0)


def shared_fitness(items, alpha: float) -> np.ndarray:
    """[N, J] -> [N]: each row's scores divided by the rows' totals per example to the alpha."""
    items = _clean(items)
    return (items / (items.sum(axis=0) + EPS) ** alpha).sum(axis=1)


def attraction(items, first: int) -> np.ndarray:
    """[N, J] -> [N]: how much each row holds of what row `first` lacks (0 for `first` itself)."""
    items = _clean(items)
    gain = np.maximum(items - items[first], 0.0) / (items.sum(axis=0) + EPS)
    out = gain.sum(axis=1)
    out[first] = 0.0
    return out


def draw(rng: np.random.Generator, weights, exclude: int | None = None) -> int:
    """An index drawn in proportion to non-negative weights (uniform when they are all zero),
    never `exclude`."""
    w = np.maximum(np.nan_to_num(np.asarray(weights, np.float64)), 0.0)
    allowed = np.ones(len(w), bool)
    if exclude is not None:
        allowed[exclude] = False
    w = np.where(allowed, w, 0.0)
    if w.sum() <= 0:
        w = allowed.astype(np.float64)
    return int(rng.choice(len(w), p=w / w.sum()))


def crossover(a, b, position, split: int, w: float) -> np.ndarray:
    """The child of genomes a and b: w·a + (1 − w)·b on genes whose `position` (layer group
    index, per gene) is below `split`, (1 − w)·a + w·b on the rest."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    before = np.asarray(position) < split
    return np.where(before, w * a + (1 - w) * b, (1 - w) * a + w * b)


def mutate(rng: np.random.Generator, genome, rate: float, scale: float) -> np.ndarray:
    """Each gene plus scale·N(0, 1) with probability `rate` (one uniform and one normal draw per
    gene, in that order, whatever the rate: the stream does not depend on it)."""
    genome = np.asarray(genome, np.float64)
    hit = rng.uniform(size=genome.shape) < rate
    step = rng.standard_normal(genome.shape)
    return genome + np.where(hit, scale * step, 0.0)


def gene_positions(layout) -> np.ndarray:
    """[D]: the layer group (0 .. layer groups − 1) of each gene of a PS genome; the genes of
    the globals' own group (`globals: own`) sit after the last layer group."""
    groups = np.arange(layout.num_groups)
    position = groups // layout.num_kinds
    if layout.globals_mode == "own":
        position[-1] = layout.num_layer_groups
    blocks = {name: np.broadcast_to(position[:, None], layout.block_shape(i))
              if layout.per_source[i] else position
              for i, name in enumerate(layout.params)}
    return layout.flatten(blocks).astype(np.int64)


def replace_worst(archive_items, child_items, alpha: float) -> int | None:
    """The archive row a child replaces, or None: the member with the lowest shared fitness in
    archive ∪ {child}, when the child's is higher."""
    pool = np.concatenate([_clean(archive_items), _clean(child_items)[None]])
    f = shared_fitness(pool, alpha)
    worst = int(np.argmin(f[:-1]))
    return worst if f[-1] > f[worst] else None
