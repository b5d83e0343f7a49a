"""Split recipes: two PS recipes joined at a boundary inside the flattened model, scored by the
population pass without a merged model being built (M2N2's crossover at a parameter index,
`m2n2.split: parameter`; docs/design.md §2.7).

A split genome is [left D | right D | x]: two PS genomes (ps/genome.py) and a boundary gene x in
[0, 1]. The model's parameters are flattened in model order: the embedding, then layer 0's tensors
in `spec.layer_tensors` order, each row-major, layer 1's, ..., then the final norm and the head.
The boundary sits at layer `floor(x·L)` (float32), parameter `round((x·L − layer)·n)` of that
layer's n parameters; every parameter before it is merged with the left recipe's values for its
group, every one from it on with the right's. The embedding takes the left recipe unless x = 0,
the final norm and the head the right one unless the boundary is past the last layer (x = 1), so
x = 0 is the right recipe alone and x = 1 the left one alone. Tied embeddings are one tensor: the
embedding's side.

In the layer scan a layer receives both recipes' coefficients and its boundary offset (0: all
right, n: all left); each tensor merges once with its side's values, and the one tensor the
boundary cuts merges with both and takes each element from its side (a `lax.cond`: the second
merge runs in that tensor only). Masks (DARE, DELLA) come from the same keys on both sides.

`project` maps a split genome to the PS genome whose every group takes the parameter-weighted mean
of its two sides (exact when no group is cut): M2N2 breeds from it, and export writes its mergekit
recipe (mergekit has no split inside a layer group; the HF dir is the exact split merge).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .population import PSModel


def decode_boundary(x, num_layers: int, layer_size: int, xp=np):
    """Boundary genes [P] -> (layer [P], offset [P]) as int32, float32 arithmetic (numpy and jax
    agree): layer in 0..L, offset in 0..n (0 when layer is L)."""
    pos = xp.clip(xp.asarray(x, xp.float32), 0.0, 1.0) * xp.float32(num_layers)
    layer = xp.floor(pos)
    offset = xp.round((pos - layer) * xp.float32(layer_size))
    layer = layer.astype(xp.int32)
    return layer, xp.where(layer >= num_layers, 0, offset).astype(xp.int32)


def tensor_spans(spec) -> dict[str, tuple[int, int]]:
    """{layer tensor: (first, end)}: its flattened span within one layer."""
    spans, start = {}, 0
    for name in spec.layer_tensors:
        size = int(np.prod(spec.layer_shape(name)))
        spans[name] = (start, start + size)
        start += size
    return spans


@dataclass(frozen=True)
class SplitPSModel(PSModel):
    """The PS population model over split genomes (2D + 1 genes)."""

    def candidates(self, genomes_pd, keys_p2):
        d, spec = self.layout.num_dims, self.spec
        layer, offset = decode_boundary(genomes_pd[:, 2 * d], spec.num_layers,
                                        tensor_spans(spec)[spec.layer_tensors[-1]][1], jnp)
        return {"values": self.layout.to_values(genomes_pd[:, :d], jnp),
                "right": self.layout.to_values(genomes_pd[:, d:2 * d], jnp),
                "split_layer": layer, "split_offset": offset, "key": keys_p2}

    def global_values(self, one, name: str) -> dict:
        left = one["split_layer"] + one["split_offset"] > 0 if name == "embed" else \
            one["split_layer"] >= self.spec.num_layers
        return jax.tree.map(lambda a, b: jnp.where(left, a, b), one["values"], one["right"])

    def layer_coefs(self, cand) -> dict:
        table = jnp.asarray(self.layout.layer_table())
        gather = lambda values: {n: jnp.moveaxis(v[:, table], 1, 0)  # noqa: E731
                                 for n, v in values.items()}
        n = tensor_spans(self.spec)[self.spec.layer_tensors[-1]][1]
        layers = jnp.arange(self.spec.num_layers)[:, None]
        split, offset = cand["split_layer"][None], cand["split_offset"][None]
        return {"left": gather(cand["values"]), "right": gather(cand["right"]),
                "offset": jnp.where(layers < split, n, jnp.where(layers > split, 0, offset))}

    def merge_candidate_layer(self, layer_w, coef, key_data, layer) -> dict:
        out, at = {}, coef["offset"]
        for name, (first, end) in tensor_spans(self.spec).items():
            kind = self.layout.kind_of(name)
            left = {n: v[kind] for n, v in coef["left"].items()}
            right = {n: v[kind] for n, v in coef["right"].items()}
            merge = lambda params, name=name: self.merge_layer_tensor(  # noqa: E731
                layer_w, name, params, key_data, layer)

            def cut(_, name=name, first=first, end=end, merge=merge, left=left, right=right):
                shape = self.spec.layer_shape(name)
                index = jnp.arange(end - first).reshape(shape)
                return jnp.where(index < at - first, merge(left), merge(right))

            def whole(_, merge=merge, left=left, right=right, end=end):
                side = at >= end
                return merge(jax.tree.map(lambda a, b: jnp.where(side, a, b), left, right))

            out[name] = jax.lax.cond((at > first) & (at < end), cut, whole, None)
        return out


def group_fractions(layout, spec, x: float) -> np.ndarray:
    """[G]: the share of each group's parameters on the left of boundary gene x."""
    spans = tensor_spans(spec)
    n = spans[spec.layer_tensors[-1]][1]
    layer, offset = (int(v[0]) for v in decode_boundary(np.asarray([x]), spec.num_layers, n))
    left, total = np.zeros(layout.num_groups), np.zeros(layout.num_groups)
    for name in spec.global_tensors:
        size, group = int(np.prod(spec.global_shape(name))), layout.global_group(name)
        on_left = layer + offset > 0 if name == "embed" else layer >= spec.num_layers
        left[group] += size * on_left
        total[group] += size
    for layer_ in range(spec.num_layers):
        at = n if layer_ < layer else (0 if layer_ > layer else offset)
        for name, (first, end) in spans.items():
            group = layout.layer_group(layer_, layout.kind_of(name))
            left[group] += min(max(at - first, 0), end - first)
            total[group] += end - first
    return left / np.maximum(total, 1)


def project(layout, spec, genome) -> np.ndarray:
    """A split genome -> the PS genome whose groups take the parameter-weighted mean of their
    two sides (the genome itself where no group is cut)."""
    genome = np.asarray(genome, np.float64)
    d = layout.num_dims
    f = group_fractions(layout, spec, float(genome[2 * d]))
    blocks = {name: np.broadcast_to(f[:, None], layout.block_shape(i)) if layout.per_source[i]
              else f for i, name in enumerate(layout.params)}
    share = layout.flatten(blocks)
    return share * genome[:d] + (1 - share) * genome[d:2 * d]

