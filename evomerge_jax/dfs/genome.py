"""The DFS path genome (Akiba et al. 2025, section 3.2 "Merging in the data flow space").

Layout. The M layers of the sources are numbered in order (A's layers, then B's, ...) and the list
is repeated r times: slot t (of T = M·r) holds layer `t mod M`. A path is the sequence of used
slots, in slot order. Slot t is used when its indicator gene I_t > 0. The hidden state entering the
layer of a used slot is multiplied by a scale: W[i, j] when the previous used layer is i and this
layer is j (W is M×M), or the entry scale when it is the first used layer. With `scale_mode="mlp"`
(the paper's compact alternative for large M), W[i, j] at slot t is a small network of (i, j, t).

Fixed ends (the paper: A's first and last layers fixed as the start and end of the path): slot 0
(A's layer 0, first repetition) is always used, and so is the *last* slot that holds A's last layer;
slots after it can never be used (the path ends there), so the genome only holds indicators for the
free slots strictly between the two. The initial genome sets the indicators of A's layers in the
first repetition to 2σ, except A's last layer there, which the fixed end already supplies: the
initial mean therefore decodes to model A itself (every scale 1).

Genome vector [D] = [indicators of the free slots | scale genes (M·M matrix or MLP weights) |
entry scale (only when evolved)]. `decode` is pure jnp, so `jax.vmap(partial(decode, spec))` turns a
population [P, D] into used [P, T] and scales [P, T] on device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import ConfigError

SCALE_MODES = ("matrix", "mlp")


@dataclass(frozen=True)
class PathSpec:
    """The static layout of a path genome. Hashable, so it can be a jit static argument."""

    source_names: tuple[str, ...]
    source_layers: tuple[int, ...]      # layers per source, A first
    repeats: int = 3                    # r
    fix_ends: bool = True
    scale_mode: str = "matrix"          # "matrix": W genes [M, M]; "mlp": W = f(i, j, t)
    mlp_hidden: int = 16
    entry_scale: float = 1.0            # scale entering the first used layer (fixed or initial)
    evolve_entry_scale: bool = False

    def __post_init__(self):
        names, layers = tuple(self.source_names), tuple(int(n) for n in self.source_layers)
        object.__setattr__(self, "source_names", names)
        object.__setattr__(self, "source_layers", layers)
        if not names or len(names) != len(layers):
            raise ConfigError(f"DFS needs one layer count per source model: got names {names} "
                              f"and layer counts {layers}")
        if any(n < 1 for n in layers):
            raise ConfigError(
                f"DFS source layer counts must be ≥ 1, got {dict(zip(names, layers))}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"DFS repeats r must be an integer ≥ 1, got {self.repeats!r}")
        if self.scale_mode not in SCALE_MODES:
            raise ConfigError(f"DFS scale_mode {self.scale_mode!r} is not one of {SCALE_MODES}")
        if self.scale_mode == "mlp" and self.mlp_hidden < 1:
            raise ConfigError(f"DFS mlp_hidden must be ≥ 1, got {self.mlp_hidden}")
        if not math.isfinite(self.entry_scale) or self.entry_scale == 0:
            raise ConfigError(
                f"DFS entry_scale must be finite and non-zero, got {self.entry_scale}")
        if self.fix_ends and self.end_slot - self.start_slot < 2:
            raise ConfigError(
                f"DFS path is empty: the fixed start ({names[0]} layer 0, slot {self.start_slot}) "
                f"and end ({names[0]} layer {layers[0] - 1}, slot {self.end_slot}) leave no slot "
                f"to search with {names[0]} of {layers[0]} layers and repeats={self.repeats}; "
                "raise repeats or set fix_ends off")

    # ---- slot layout ---------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        """M: all layers of all sources."""
        return sum(self.source_layers)

    @property
    def num_slots(self) -> int:
        """T = M·r."""
        return self.num_layers * self.repeats

    @property
    def slot_layers(self) -> np.ndarray:
        """Layer id [T] held by each slot."""
        return np.arange(self.num_slots) % self.num_layers

    @property
    def start_slot(self) -> int:
        return 0

    @property
    def end_slot(self) -> int:
        """The last slot holding A's last layer (the fixed end), or the last slot."""
        if not self.fix_ends:
            return self.num_slots - 1
        return (self.repeats - 1) * self.num_layers + self.source_layers[0] - 1

    @property
    def window(self) -> tuple[int, int]:
        """[lo, hi): the slots a path can use; the population pass scans only these."""
        return self.start_slot, self.end_slot + 1

    @property
    def fixed_slots(self) -> np.ndarray:
        return np.array([self.start_slot, self.end_slot] if self.fix_ends else [], np.int64)

    @property
    def free_slots(self) -> np.ndarray:
        """The slots with an indicator gene, in slot order."""
        lo, hi = self.window
        return np.arange(lo + 1, hi - 1) if self.fix_ends else np.arange(lo, hi)

    # ---- gene layout ---------------------------------------------------------------------
    @property
    def num_scale_genes(self) -> int:
        m, h = self.num_layers, self.mlp_hidden
        return m * m if self.scale_mode == "matrix" else 5 * h + 1  # W1 [H,3], b1, w2, b2

    @property
    def num_genes(self) -> int:
        """D, the genome length."""
        return len(self.free_slots) + self.num_scale_genes + int(self.evolve_entry_scale)

    def split(self, genome_d):
        """(indicators [F], scale genes, entry scale or None) as views of one genome."""
        f, w = len(self.free_slots), self.num_scale_genes
        entry = genome_d[f + w] if self.evolve_entry_scale else None
        return genome_d[:f], genome_d[f:f + w], entry


class DecodedPath(NamedTuple):
    """A genome decoded on device; with a leading [P] axis under vmap."""

    used_t: jax.Array    # [T] bool
    scale_t: jax.Array   # [T] float32: the scale of the state entering slot t's layer (where used)


def _mlp_scales(spec: PathSpec, theta, prev_t, layer_t):
    """W[i, j] at slot t as a tanh MLP of (i, j, t), each rescaled to [-1, 1]."""
    h = spec.mlp_hidden
    w1, b1 = theta[:3 * h].reshape(h, 3), theta[3 * h:4 * h]
    w2, b2 = theta[4 * h:5 * h], theta[5 * h]
    m1, t1 = max(spec.num_layers - 1, 1), max(spec.num_slots - 1, 1)
    x_t3 = jnp.stack([2 * prev_t / m1 - 1, 2 * layer_t / m1 - 1,
                      2 * jnp.arange(spec.num_slots) / t1 - 1], axis=-1).astype(jnp.float32)
    return jnp.tanh(x_t3 @ w1.T + b1) @ w2 + b2


def decode(spec: PathSpec, genome_d) -> DecodedPath:
    """One genome [D] -> used slots and per-slot scales [T]. Pure jnp (vmap for a population).

    The scale of slot t depends on the previous *used* slot, found with a running max of the used
    slot indices; computing it here (not in the forward scan) keeps one definition of the scales
    for evaluation, generation and export.
    """
    genome_d = jnp.asarray(genome_d, jnp.float32)
    ind_f, scale_genes, entry = spec.split(genome_d)
    t_count = spec.num_slots
    used = jnp.zeros(t_count, bool).at[spec.free_slots].set(ind_f > 0)
    used = used.at[spec.fixed_slots].set(True)
    slot_t = jnp.arange(t_count)
    last_used = jax.lax.cummax(jnp.where(used, slot_t, -1))
    prev_slot = jnp.concatenate([jnp.array([-1]), last_used[:-1]])
    layer_t = jnp.asarray(spec.slot_layers)
    prev_layer = jnp.where(prev_slot >= 0, layer_t[jnp.maximum(prev_slot, 0)], 0)
    if spec.scale_mode == "matrix":
        m = spec.num_layers
        inner = scale_genes.reshape(m, m)[prev_layer, layer_t]
    else:
        inner = _mlp_scales(spec, scale_genes, prev_layer, layer_t)
    first = entry if entry is not None else jnp.float32(spec.entry_scale)
    return DecodedPath(used, jnp.where(prev_slot >= 0, inner, first).astype(jnp.float32))


def decode_population(spec: PathSpec, genomes_pd) -> DecodedPath:
    return jax.vmap(lambda g: decode(spec, g))(genomes_pd)


def initial_genome(spec: PathSpec, sigma: float, key: jax.Array | None = None) -> jax.Array:
    """The strategy's mean [D]: indicators 0 except A's first-repetition layers at 2σ (those the
    fixed ends supply excepted), W = 1, entry scale as configured. The MLP needs `key` for its
    hidden weights (random, so that its units differ); its output layer starts at the constant 1."""
    ind = np.zeros(len(spec.free_slots), np.float32)
    in_a = (spec.free_slots < spec.source_layers[0])
    if spec.fix_ends:
        in_a &= spec.free_slots != spec.source_layers[0] - 1
    ind[in_a] = 2.0 * sigma
    if spec.scale_mode == "matrix":
        scale = jnp.ones(spec.num_scale_genes, jnp.float32)
    else:
        if key is None:
            raise ConfigError("DFS scale_mode 'mlp' needs a random key to initialise its weights")
        h = spec.mlp_hidden
        w1b1 = jax.random.normal(key, (4 * h,), jnp.float32)
        scale = jnp.concatenate([w1b1, jnp.zeros(h, jnp.float32), jnp.ones(1, jnp.float32)])
    entry = jnp.full((int(spec.evolve_entry_scale),), spec.entry_scale, jnp.float32)
    return jnp.concatenate([jnp.asarray(ind), scale, entry])


def genome_for(spec: PathSpec, used_slots, w_mm=None, entry_scale: float | None = None,
               margin: float = 1.0) -> jax.Array:
    """A genome that decodes to the path over `used_slots` (fixed ends added) with scale matrix
    `w_mm` (default all ones): the known optimum for a target built from that path."""
    if spec.scale_mode != "matrix":
        raise ConfigError(
            "genome_for needs scale_mode 'matrix' (an MLP cannot be set to a given W)")
    lo, hi = spec.window
    slots = sorted(set(int(t) for t in used_slots))
    bad = [t for t in slots if not lo <= t < hi]
    if bad:
        raise ConfigError(f"slots {bad} lie outside the usable window [{lo}, {hi}) of the path")
    if entry_scale is not None and not spec.evolve_entry_scale:
        raise ConfigError("entry_scale is fixed by the path spec (evolve_entry_scale is off)")
    m = spec.num_layers
    w = np.ones((m, m), np.float32) if w_mm is None else np.asarray(w_mm, np.float32)
    if w.shape != (m, m):
        raise ConfigError(f"scale matrix must be [{m}, {m}], got {list(w.shape)}")
    ind = np.where(np.isin(spec.free_slots, slots), margin, -margin).astype(np.float32)
    entry = ([spec.entry_scale if entry_scale is None else entry_scale]
             if spec.evolve_entry_scale else [])
    return jnp.asarray(np.concatenate([ind, w.reshape(-1), np.asarray(entry, np.float32)]))
