"""Mixtral checkpoints as the engine names them. Hub checkpoints (and transformers 5's
`save_pretrained`) store each expert apart, `block_sparse_moe.experts.{e}.w1/w2/w3.weight`, and the
router as `block_sparse_moe.gate.weight`; transformers 5 (in memory) and mergekit 0.1.5 (on disk)
use one fused tensor per layer: `mlp.experts.gate_up_proj` [U, 2F, D] (each expert's w1 rows, then
its w3 rows), `mlp.experts.down_proj` [U, D, F] (w2) and `mlp.gate.weight`. The engine reads,
merges and writes the fused names; `legacy_views` maps each fused name to the per-expert tensors
it is made of, so that `TensorReader` serves either layout under the fused names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import CheckpointError

_LEGACY = re.compile(r"^(?P<layer>.+\.)block_sparse_moe\.(?:gate\.weight|experts\.(?P<e>\d+)\."
                     r"(?P<w>w[123])\.weight)$")
_PARTS = {"mlp.experts.gate_up_proj": ("w1", "w3"), "mlp.experts.down_proj": ("w2",)}


@dataclass(frozen=True)
class View:
    """A fused tensor: `parts[e]` are expert e's stored tensors, concatenated on their first axis
    and stacked over e; `stacked=False`: a plain rename of `parts[0][0]`."""

    parts: tuple[tuple[str, ...], ...]
    stacked: bool = True


def legacy_views(names, where: str) -> dict[str, View]:
    """Fused name -> View for every per-expert tensor in `names` (empty for a fused checkpoint).
    An expert missing one of w1, w2, w3, or expert indices with a gap, fail in one line."""
    layers: dict[str, dict[int, set[str]]] = {}
    views: dict[str, View] = {}
    for name in names:
        match = _LEGACY.match(name)
        if match is None:
            continue
        layer = match["layer"]
        if match["e"] is None:
            views[f"{layer}mlp.gate.weight"] = View(((name,),), stacked=False)
        else:
            layers.setdefault(layer, {}).setdefault(int(match["e"]), set()).add(match["w"])
    for layer, experts in layers.items():
        if sorted(experts) != list(range(len(experts))):
            raise CheckpointError(f"{where}: {layer}block_sparse_moe.experts: expert indices "
                                  f"{sorted(experts)} are not 0..{len(experts) - 1}")
        for e, held in sorted(experts.items()):
            if held != {"w1", "w2", "w3"}:
                missing = sorted({"w1", "w2", "w3"} - held)
                raise CheckpointError(f"{where}: missing tensor {layer}block_sparse_moe.experts."
                                      f"{e}.{missing[0]}.weight")
        for fused, kinds in _PARTS.items():
            views[layer + fused] = View(tuple(
                tuple(f"{layer}block_sparse_moe.experts.{e}.{w}.weight" for w in kinds)
                for e in range(len(experts))))
    return views
