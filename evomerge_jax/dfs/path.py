"""A decoded path on the host: which layer each step runs and with what scale.

`LayerPath` is what gets logged, exported (`path.json`), plotted and compared in tests. It is named
so as not to shadow `pathlib.Path`, which the exporter uses beside it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import jax
import numpy as np

from ..errors import ConfigError
from .genome import DecodedPath, PathSpec, decode, decode_population

PATH_FORMAT = "evomerge-dfs-path/1"


@dataclass(frozen=True)
class LayerPath:
    """Step k applies global layer `layers[k]` to `scales[k]` × the incoming hidden state."""

    source_names: tuple[str, ...]
    source_layers: tuple[int, ...]
    layers: tuple[int, ...]
    scales: tuple[float, ...]
    slots: tuple[int, ...] | None = None   # the slot of each step, when decoded from a genome

    def __post_init__(self):
        for name in ("source_names", "source_layers", "layers", "scales"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "scales", tuple(float(x) for x in self.scales))
        if self.slots is not None:
            object.__setattr__(self, "slots", tuple(int(x) for x in self.slots))
        if not self.layers:
            raise ConfigError(f"DFS path over {', '.join(self.source_names)} uses no layer: "
                              "a model needs at least one (check the indicators or fix_ends)")
        if len(self.scales) != len(self.layers) or (
                self.slots is not None and len(self.slots) != len(self.layers)):
            slots = "" if self.slots is None else f" and {len(self.slots)} slots"
            raise ConfigError(f"DFS path has {len(self.layers)} layers but {len(self.scales)} "
                              f"scales{slots}")
        m = sum(self.source_layers)
        bad = [x for x in self.layers if not 0 <= x < m]
        if bad:
            raise ConfigError(f"DFS path layer ids {bad} are outside [0, {m}) for sources "
                              f"{dict(zip(self.source_names, self.source_layers))}")
        if not all(math.isfinite(s) for s in self.scales):
            raise ConfigError(f"DFS path has a non-finite scale: {self.scales}")

    @property
    def num_steps(self) -> int:
        return len(self.layers)

    def cumulative_scales(self) -> np.ndarray:
        """c_k = s_1·…·s_k in float64: the factor between the path's residual stream and that of
        the exported plain model (docs/design.md §4)."""
        return np.cumprod(np.asarray(self.scales, np.float64))

    def step_sources(self) -> list[tuple[str, int]]:
        """(source name, layer index within that source) for every step."""
        out = []
        for layer in self.layers:
            for name, count in zip(self.source_names, self.source_layers):
                if layer < count:
                    out.append((name, layer))
                    break
                layer -= count
        return out

    def to_json(self) -> str:
        cum = self.cumulative_scales()
        steps = [{"step": k, "slot": None if self.slots is None else self.slots[k],
                  "layer": layer, "source": src, "source_layer": idx,
                  "scale": self.scales[k], "cumulative_scale": float(cum[k])}
                 for k, (layer, (src, idx)) in enumerate(zip(self.layers, self.step_sources()))]
        doc = {"format": PATH_FORMAT,
               "sources": [{"name": n, "num_layers": c}
                           for n, c in zip(self.source_names, self.source_layers)],
               "num_steps": self.num_steps, "steps": steps}
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "path.json") -> "LayerPath":
        try:
            doc = json.loads(text)
            if doc.get("format") != PATH_FORMAT:
                raise ConfigError(f"{where}: format {doc.get('format')!r} is not {PATH_FORMAT!r}")
            steps = doc["steps"]
            slots = [s["slot"] for s in steps]
            return cls(source_names=[s["name"] for s in doc["sources"]],
                       source_layers=[int(s["num_layers"]) for s in doc["sources"]],
                       layers=[s["layer"] for s in steps], scales=[s["scale"] for s in steps],
                       slots=None if any(t is None for t in slots) else slots)
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{where}: not a DFS path file ({exc!r})") from None


def path_from_decoded(spec: PathSpec, decoded: DecodedPath) -> LayerPath:
    """The host view of one decoded genome (no population axis)."""
    used = np.asarray(decoded.used_t, bool)
    slots = np.flatnonzero(used)
    return LayerPath(source_names=spec.source_names, source_layers=spec.source_layers,
                     layers=spec.slot_layers[slots], scales=np.asarray(decoded.scale_t)[slots],
                     slots=slots)


# Host helpers decode through jit: op-by-op dispatch of the small decode costs seconds.
_decode = jax.jit(decode, static_argnums=0)
_decode_population = jax.jit(decode_population, static_argnums=0)


def decode_path(spec: PathSpec, genome_d) -> LayerPath:
    return path_from_decoded(spec, _decode(spec, genome_d))


def decode_paths(spec: PathSpec, genomes_pd) -> list[LayerPath]:
    """Host paths of a population [P, D] (one device decode, then P host views)."""
    decoded = _decode_population(spec, genomes_pd)
    used, scale = np.asarray(decoded.used_t), np.asarray(decoded.scale_t)
    return [path_from_decoded(spec, DecodedPath(u, s)) for u, s in zip(used, scale)]
