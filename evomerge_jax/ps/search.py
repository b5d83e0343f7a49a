"""Parameter-space search: the sources loaded and stacked, the genome layout, and the `PSModel`,
assembled from an `EvolveConfig` into a `Search` (the protocol in `evolve/loop.py`).

Source weights are stacked once: global tensors [K, ...] and per-layer tensors [L, K, ...]
(layers first, then sources, then the tensor's own axes), read straight onto the device mesh
(mesh.py: each process reads only the blocks its devices hold). For the magnitude sparsifiers (TIES,
breadcrumbs) the sorted-magnitude table of every task vector is precomputed too
(docs/design.md §2.1), so a candidate's trim is a lookup and a compare.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..arch import global_hf_name, layer_hf_name
from ..checkpoint import DTYPES
from ..errors import ConfigError
from ..evolve.strategy import build_strategy
from ..evolve.tasks import load_tasks, load_tokenizer
from ..evolve.vision import export_as_vlm, tokenizer_dir, vision_for
from ..kernels import kernel_fields
from ..merge.sparsify import magnitude_table
from ..evolve.method_genes import uses_tables as method_uses_tables
from ..parallel.mesh import first_device_mesh, read_global, weight_shardings
from ..sources import source_config, source_reader
from .export import export_ps
from .genome import GenomeLayout, clip, make_layout
from .population import PSModel


def check_models(cfg):
    """Read every model's config and safetensors headers (no tensor data); all architecture or
    shape mismatches are reported at once. Returns (base spec, base HF config)."""
    _, base_cfg, spec = source_config(cfg.base_model)
    source_reader(cfg.base_model).check()
    problems = []
    for path in cfg.models:
        _, _, other = source_config(path)
        diffs = [_diff(f.name, getattr(other, f.name), getattr(spec, f.name))
                 for f in dataclasses.fields(spec) if getattr(other, f.name) != getattr(spec, f.name)]
        if diffs:
            problems.append(f"{path} differs from base_model {cfg.base_model} in " + ", ".join(diffs))
            continue
        source_reader(path).check()
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
    reader = source_reader(base_dir)
    return reader.dtype("model.embed_tokens.weight")


def weight_shapes(spec, num_sources: int, dtype: str, uses_tables: bool) -> dict:
    """The ShapeDtypeStructs of `load_weights`'s pytree, read from the spec alone."""
    dt, L, K = DTYPES[dtype], spec.num_layers, num_sources

    def tree(lead: tuple, cast=dt, flat: bool = False) -> dict:
        shape = (lambda s: (int(np.prod(s)),)) if flat else (lambda s: s)
        out = {n: jax.ShapeDtypeStruct(lead + shape(spec.global_shape(n)), cast)
               for n in spec.global_tensors}
        out["layers"] = {n: jax.ShapeDtypeStruct((L,) + lead + shape(spec.layer_shape(n)), cast)
                         for n in spec.layer_tensors}
        return out

    return {"base": tree(()), "sources": tree((K,)),
            "tables": tree((K,), jnp.float32, flat=True) if uses_tables else {}}


def load_weights(cfg, spec, dtype: str, uses_tables: bool, mesh) -> dict:
    """{"base": params, "sources": stacked params, "tables": sorted |task vector| or {}}, as
    global arrays placed on `mesh` (see mesh.py): each process reads from the safetensors files
    only the blocks its devices hold."""
    readers = [source_reader(cfg.base_model)] + [source_reader(m) for m in cfg.models]
    shapes = weight_shapes(spec, len(cfg.models), dtype, uses_tables)
    shardings = weight_shardings(mesh, spec, shapes)
    dt = DTYPES[dtype]

    def tensor(part: str, name: str, layered: bool):
        x, sharding = shapes[part], shardings[part]
        x, sharding = (x["layers"][name], sharding["layers"][name]) if layered else (
            x[name], sharding[name])
        stacked = int(layered) + (part == "sources")

        def read_one(ids, own):
            layer, source = (ids[0] if layered else None), (ids[-1] + 1 if part == "sources" else 0)
            hf = layer_hf_name(name, layer, spec) if layered else global_hf_name(name)
            return readers[source].read_slice(hf, own, dt)

        return read_global(x.shape, dt, sharding, stacked, read_one)

    weights = {part: {n: tensor(part, n, False) for n in spec.global_tensors}
               for part in ("base", "sources")}
    for part in ("base", "sources"):
        weights[part]["layers"] = {n: tensor(part, n, True) for n in spec.layer_tensors}
    weights["tables"] = _tables(weights, shardings["tables"]) if uses_tables else {}
    return weights


def _tables(weights: dict, shardings: dict) -> dict:
    """Sorted |task vector| of every source tensor [K, N] ([L, K, N] per layer), computed where
    the sources lie and split like `shardings`."""
    per_k = jax.vmap(lambda b, x: magnitude_table(x.astype(jnp.float32) - b.astype(jnp.float32)),
                     in_axes=(None, 0))
    base, sources = weights["base"], weights["sources"]
    tables = {n: jax.jit(per_k, out_shardings=shardings[n])(base[n], sources[n])
              for n in sources if n != "layers"}
    tables["layers"] = {n: jax.jit(jax.vmap(per_k), out_shardings=shardings["layers"][n])(
        base["layers"][n], sources["layers"][n]) for n in base["layers"]}
    return tables


class PSSearch:
    """The `Search` of parameter-space evolution."""

    kind = "ps"

    def __init__(self, cfg, spec, hf_config: dict, vision=None):
        self.cfg, self.spec, self.hf_config = cfg, spec, hf_config
        self.vision = vision  # evolve/vision.py: a VLM's frozen vision side, or None
        self.layout: GenomeLayout = make_layout(cfg, len(cfg.models), spec.num_layers)
        self.dtype = forward_dtype(cfg, cfg.base_model)
        uses_tables = method_uses_tables(cfg.merge.method)
        self.model = PSModel(spec, self.layout, cfg.merge.method, cfg.merge.rescale_rule,
                             tuple(sorted(cfg.merge.parameters.items())), self.dtype, uses_tables,
                             cfg.compute.prng,
                             **kernel_fields(cfg.compute.kernels, cfg.merge.method,
                                             cfg.compute.prng))
        self.weights = None  # device weights, after `load()` (export reads the files instead)

    @property
    def num_dims(self) -> int:
        return self.layout.num_dims

    def weight_layout(self) -> tuple:
        """(spec, ShapeDtypeStructs of the weights), before loading (the mesh is sized on it)."""
        return self.spec, weight_shapes(self.spec, len(self.cfg.models), self.dtype,
                                        self.model.uses_tables)

    def load(self, mesh=None):
        """Read the weights onto `mesh` (default: the first local device alone)."""
        mesh = mesh or first_device_mesh()
        self.weights = load_weights(self.cfg, self.spec, self.dtype, self.model.uses_tables, mesh)
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
        """The candidate as an HF dir: a text LM, or with `vision_model` a LLaVA dir."""
        write = lambda out, overwrite: export_ps(  # noqa: E731
            self, genome, key_data, out, overwrite=overwrite, note=note)
        if self.vision is not None:
            return export_as_vlm(self.vision, write, Path(out_dir), overwrite=overwrite)
        return write(out_dir, overwrite)


def _checked(cfg):
    """(spec, HF config, vision) after every check of the models (and of `vision_model`)."""
    spec, hf_config = check_models(cfg)
    vision = vision_for(cfg)
    if vision is not None:
        vision.check_language(spec, f"base_model {cfg.base_model}")
    return spec, hf_config, vision


def ps_search_for(cfg) -> PSSearch:
    """The search of a `search: ps` config, checked, no weights loaded (for export)."""
    return PSSearch(cfg, *_checked(cfg))


def ps_parts(cfg):
    """What every search over PS genomes (ps, pareto, gradient, m2n2) checks and loads before
    any weights: (search, tasks, tokenizer)."""
    spec, hf_config, vision = _checked(cfg)
    tokenizer = load_tokenizer(tokenizer_dir(cfg, cfg.base_model))
    tasks = load_tasks(cfg.tasks, tokenizer, hf_config.get("max_position_embeddings"), vision)
    return PSSearch(cfg, spec, hf_config, vision), tasks, tokenizer


def prepare_ps(cfg, log=print):
    """Every check of a `search: ps` config that needs no weights: (search, tasks, tokenizer,
    strategy)."""
    search, tasks, tokenizer = ps_parts(cfg)
    return search, tasks, tokenizer, build_strategy(cfg.strategy, search.num_dims)
