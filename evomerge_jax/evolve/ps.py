"""Parameter-space search: the sources loaded and stacked, the genome layout, and the `PSModel`,
assembled from an `EvolveConfig` into a `Search` (see `search.py`).

Source weights are stacked once: global tensors [K, ...] and per-layer tensors [L, K, ...]
(layers first, then sources, then the tensor's own axes). For the magnitude sparsifiers (TIES,
breadcrumbs) the sorted-magnitude table of every task vector is precomputed too (DESIGN.md
section 3, idea 2), so a candidate's trim is a lookup and a compare.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..checkpoint import TensorReader, load, read_config
from ..errors import ConfigError
from ..merge.sparsify import magnitude_table
from ..merge.task_arithmetic import PRESETS
from .genome import GenomeLayout, clip, make_layout
from .population import PSModel

_TABLE_SPARSIFIERS = ("magnitude", "magnitude_outliers")


def check_models(cfg):
    """Read every model's config and safetensors headers (no tensor data); all architecture or
    shape mismatches are reported at once. Returns (base spec, base HF config)."""
    _, base_cfg, spec = read_config(cfg.base_model)
    TensorReader(cfg.base_model).check()
    problems = []
    for path in cfg.models:
        _, _, other = read_config(path)
        diffs = [_diff(f.name, getattr(other, f.name), getattr(spec, f.name))
                 for f in dataclasses.fields(spec) if getattr(other, f.name) != getattr(spec, f.name)]
        if diffs:
            problems.append(f"{path} differs from base_model {cfg.base_model} in " + ", ".join(diffs))
            continue
        TensorReader(path).check()
    if problems:
        raise ConfigError("models must share the base model's architecture and shapes: "
                          + "; ".join(problems))
    return spec, base_cfg


def _diff(name: str, theirs, ours) -> str:
    if len(repr(theirs)) + len(repr(ours)) > 60:  # tensor lists, per-layer flags: name only
        return name
    return f"{name} {theirs!r} vs {ours!r}"


def forward_dtype(cfg, base_dir: Path) -> str:
    if cfg.compute.dtype:
        return cfg.compute.dtype
    reader = TensorReader(base_dir)
    return reader.dtype("model.embed_tokens.weight")


def load_weights(cfg, dtype: str, uses_tables: bool) -> dict:
    """{"base": params, "sources": stacked params, "tables": sorted |task vector| or {}}."""
    base = load(cfg.base_model, dtype).params
    sources = [load(path, dtype).params for path in cfg.models]
    stacked = {name: jnp.stack([s[name] for s in sources]) for name in base if name != "layers"}
    stacked["layers"] = {name: jnp.stack([s["layers"][name] for s in sources], axis=1)
                         for name in base["layers"]}
    del sources
    tables: dict = {}
    if uses_tables:
        sort_k = jax.jit(jax.vmap(lambda b, x: magnitude_table(x.astype(jnp.float32)
                                                               - b.astype(jnp.float32)),
                                  in_axes=(None, 0)))
        tables = {name: sort_k(base[name], stacked[name]) for name in stacked if name != "layers"}
        tables["layers"] = {name: jax.vmap(sort_k)(base["layers"][name], stacked["layers"][name])
                            for name in base["layers"]}
    return {"base": base, "sources": stacked, "tables": tables}


class PSSearch:
    """The `Search` of parameter-space evolution."""

    kind = "ps"

    def __init__(self, cfg, spec, hf_config: dict):
        self.cfg, self.spec, self.hf_config = cfg, spec, hf_config
        self.layout: GenomeLayout = make_layout(cfg, len(cfg.models), spec.num_layers)
        self.dtype = forward_dtype(cfg, cfg.base_model)
        uses_tables = PRESETS[cfg.merge.method].sparsifier in _TABLE_SPARSIFIERS
        self.model = PSModel(spec, self.layout, cfg.merge.method, cfg.merge.rescale_rule,
                             tuple(sorted(cfg.merge.parameters.items())), self.dtype, uses_tables,
                             cfg.compute.prng)
        self.weights = None  # device weights, after `load()` (export reads the files instead)

    @property
    def num_dims(self) -> int:
        return self.layout.num_dims

    def load(self):
        self.weights = load_weights(self.cfg, self.dtype, self.model.uses_tables)
        return self

    def initial_mean(self) -> np.ndarray:
        return self.layout.initial_mean(self.cfg.strategy.mean)

    def clip(self, genomes):
        return clip(genomes)

    def describe(self, genome) -> dict:
        """The recipe of one genome (clipped): per evolved parameter, values [G][K] or [G]."""
        values = self.layout.to_values(clip(np.asarray(genome)[None])[0][0])
        return {"groups": [self.layout.group_label(g) for g in range(self.layout.num_groups)],
                "sources": [str(m) for m in self.cfg.models],
                "values": {n: np.round(np.asarray(v, np.float64), 6).tolist()
                           for n, v in values.items()}}

    def export(self, genome, key_data, out_dir, *, overwrite=False, note: str = "") -> Path:
        from .export import export_ps

        return export_ps(self, genome, key_data, out_dir, overwrite=overwrite, note=note)
