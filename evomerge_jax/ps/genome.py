"""The PS genome: a flat vector in [0, 1]^D (what evosax sees) <-> merge parameters per layer group
and per source.

Groups. Layers are cut into groups of N consecutive layers (N = L: one set for the whole model,
N = 1: one set per layer); with `split_attn_mlp` each layer group holds two sets, one for the
attention tensors (and the norm before attention) and one for the MLP tensors (and its norm). The
global tensors (embed, final norm, lm_head) either get a set of their own (`globals: own`, the
paper's "embeddings included") or take the set of the nearest layer group (`nearest`: embed from
the first group, final norm and lm_head from the last, as a mergekit `slices:` config assigns them).

Genome order, parameter-major: for each evolved parameter a block [G, K] (per-source parameters
such as weight and density) or [G] (global ones such as lambda). Gene x maps linearly to the value
low + x·(high − low); genes outside [0, 1] are clipped (and counted) before evaluation. With the
default bounds [0, 1] a gene is the parameter value itself, so the paper's CMA-ES setting (mean 0.5,
sigma 1/6 over [0, 1]) is expressed as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..arch import LAYER_TENSORS
from ..evolve.method_genes import method_parameters


@dataclass(frozen=True)
class GenomeLayout:
    """Static description of the genome; hashable, so jitted functions may take it as static."""

    params: tuple[str, ...]                  # evolved parameters, in genome order
    per_source: tuple[bool, ...]             # per parameter: one value per source, or one per group
    bounds: tuple[tuple[float, float], ...]  # per parameter, in parameter units
    num_sources: int
    num_layers: int
    layers_per_group: int
    split_attn_mlp: bool
    globals_mode: str                        # "own" | "nearest"

    @property
    def num_kinds(self) -> int:
        return 2 if self.split_attn_mlp else 1

    @property
    def num_layer_groups(self) -> int:
        return -(-self.num_layers // self.layers_per_group)

    @property
    def num_groups(self) -> int:
        return self.num_layer_groups * self.num_kinds + (self.globals_mode == "own")

    def block_shape(self, i: int) -> tuple[int, ...]:
        return (self.num_groups, self.num_sources) if self.per_source[i] else (self.num_groups,)

    @property
    def num_dims(self) -> int:
        return sum(int(np.prod(self.block_shape(i))) for i in range(len(self.params)))

    def kind_of(self, tensor: str) -> int:
        """0 for attention-side tensors (or every tensor when not split), 1 for MLP-side ones."""
        return int(self.split_attn_mlp and LAYER_TENSORS[tensor].side == "mlp")

    def layer_group(self, layer: int, kind: int) -> int:
        return (layer // self.layers_per_group) * self.num_kinds + kind

    def global_group(self, tensor: str) -> int:
        if self.globals_mode == "own":
            return self.num_groups - 1
        layer = 0 if tensor == "embed" else self.num_layers - 1
        return self.layer_group(layer, 0)

    def layer_table(self) -> np.ndarray:
        """int32 [L, kinds]: the group of each layer's attention-side and MLP-side tensors."""
        return np.array([[self.layer_group(l, c) for c in range(self.num_kinds)]
                         for l in range(self.num_layers)], np.int32)

    def group_label(self, group: int) -> str:
        if self.globals_mode == "own" and group == self.num_groups - 1:
            return "embed/norm/head"
        lg, kind = divmod(group, self.num_kinds)
        first = lg * self.layers_per_group
        last = min(first + self.layers_per_group, self.num_layers) - 1
        span = f"layer {first}" if first == last else f"layers {first}-{last}"
        return span + ((" attn", " mlp")[kind] if self.split_attn_mlp else "")

    def unflatten(self, genome, xp=np):
        """[..., D] -> {param: [..., G, K] or [..., G]} in gene units (numpy or jax.numpy)."""
        out, start = {}, 0
        lead = genome.shape[:-1]
        for i, name in enumerate(self.params):
            shape = self.block_shape(i)
            size = int(np.prod(shape))
            out[name] = xp.reshape(genome[..., start:start + size], lead + shape)
            start += size
        return out

    def flatten(self, blocks: dict, xp=np):
        lead = next(iter(blocks.values())).shape[:-len(self.block_shape(0))]
        return xp.concatenate([xp.reshape(blocks[n], lead + (-1,)) for n in self.params], axis=-1)

    def to_values(self, genome, xp=np):
        """Genes -> parameter values (low + x·(high − low)), unflattened. Genes are not clipped
        here: pass `clip(genome)` (the evaluation always does)."""
        blocks = self.unflatten(genome, xp)
        return {n: low + blocks[n] * (high - low) for n, (low, high) in zip(self.params, self.bounds)}

    def from_values(self, values: dict, xp=np):
        """Inverse of `to_values`: parameter values -> genes."""
        return self.flatten({n: (xp.asarray(values[n]) - low) / (high - low)
                             for n, (low, high) in zip(self.params, self.bounds)}, xp)

    def initial_mean(self, mean: float) -> np.ndarray:
        return np.full(self.num_dims, mean, np.float32)


def clip(genomes: np.ndarray) -> tuple[np.ndarray, int]:
    """Clip genes into [0, 1]; returns the clipped array and how many genes were out of bounds
    (NaN genes count as out of bounds and are left NaN: the evaluation ranks them last)."""
    genomes = np.asarray(genomes, np.float32)
    outside = ~((genomes >= 0.0) & (genomes <= 1.0))
    return np.clip(genomes, 0.0, 1.0), int(outside.sum())


def make_layout(cfg, num_sources: int, num_layers: int) -> GenomeLayout:
    """The layout an `EvolveConfig` describes, for K sources and L layers."""
    kinds = method_parameters(cfg.merge.method)
    return GenomeLayout(
        params=tuple(cfg.merge.evolve),
        per_source=tuple(kinds[n] == "per_source" for n in cfg.merge.evolve),
        bounds=tuple(cfg.merge.bounds_of(n) for n in cfg.merge.evolve),
        num_sources=num_sources, num_layers=num_layers,
        layers_per_group=cfg.grouping.layers_per_group(num_layers),
        split_attn_mlp=cfg.grouping.split_attn_mlp, globals_mode=cfg.grouping.globals)
