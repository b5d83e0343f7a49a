"""Data-flow-space search (Akiba et al. 2025, section 3.2) as a `Search` (the protocol in
`evolve/loop.py`).

DFS. The genome is a path through the layers of models A and B repeated r times (`dfs/genome.py`):
indicator genes pick the used slots, a scale matrix W (or a small MLP) the scale of the hidden
state entering each used layer. `DFSModel` is a population model (the interface of
`population.py`) over the source stack (`dfs/stack.py`: A's embeddings and head, layers [M, ...]):
all P candidates run in one scan over the usable slots (`dfs.population_hidden`,
`dfs.population_generate`); the candidates' merge keys are unused (a path has no randomness). The
best path is exported folded into a plain checkpoint of A's architecture (`dfs.save_path_model`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import jax
import numpy as np

from ..arch import ModelSpec, global_hf_name, layer_hf_name
from ..checkpoint import DTYPES, Checkpoint
from ..evolve.config import EvolveConfig
from ..evolve.config_sections import DFSSection
from ..evolve.strategy import build_strategy
from ..evolve.tasks import load_tasks, load_tokenizer
from ..evolve.vision import export_as_vlm, tokenizer_dir, vision_for
from ..model import unembed
from ..parallel.memory_model import Workload, dfs_candidate_bytes
from ..parallel.mesh import first_device_mesh, read_global, weight_shardings
from ..parallel.seeds import DFS_MLP_STREAM
from ..sources import source_config, source_reader
from .export import save_path_model
from .forward import population_hidden
from .generate import population_generate
from .genome import PathSpec, decode, initial_genome
from .path import decode_path
from .stack import check_compatible

_GENERIC_NAMES = ("A", "B")  # the compiled pass's names: runs over other dirs reuse its code


def dfs_sources(cfg: EvolveConfig) -> tuple[Path, Path]:
    """(A, B) of a `search: dfs` config: dfs.a / dfs.b, else the first of `models` in order."""
    dfs = cfg.dfs or DFSSection()
    models = list(cfg.models)
    a = dfs.a if dfs.a is not None else models.pop(0)
    b = dfs.b if dfs.b is not None else models.pop(0)
    return Path(a), Path(b)


def check_dfs_models(a: Path, b: Path, dfs: DFSSection) -> tuple[PathSpec, dict]:
    """Configs and safetensors headers only (no tensor data): A and B must share one layer
    architecture (hidden size, vocabulary, ...; `dfs.check_compatible`) and the path must be
    non-empty. Returns (path spec, A's HF config)."""
    _, a_cfg, a_spec = source_config(a)
    _, _, b_spec = source_config(b)
    names = (str(a), str(b))
    check_compatible([SimpleNamespace(spec=a_spec), SimpleNamespace(spec=b_spec)], names)
    for path in (a, b):
        source_reader(path).check()
    spec = PathSpec(source_names=names, source_layers=(a_spec.num_layers, b_spec.num_layers),
                    repeats=dfs.repeats, fix_ends=dfs.fix_ends, scale_mode=dfs.scale_mode,
                    mlp_hidden=dfs.mlp_hidden, entry_scale=dfs.entry_scale,
                    evolve_entry_scale=dfs.evolve_entry_scale)
    return spec, a_cfg


@dataclass(frozen=True)
class DFSModel:
    """The DFS population pass (hashable: a jit static argument). `spec` is the stack's (M
    layers); `global_batch` is the candidates per step of the LM-head map."""

    spec: ModelSpec
    path_spec: PathSpec
    global_batch: int = 1
    dtype: str = "float32"  # the stack's (for the memory estimate)

    def candidates(self, genomes_pd, keys_p2):
        return {"genomes": genomes_pd}

    def hidden(self, weights, cand, tokens_bs, mask_bs, image=None):
        return population_hidden(weights, self.spec, self.path_spec, cand["genomes"], tokens_bs,
                                 mask_bs, image)

    def head_map(self, weights, cand, h_pbsd, fn):
        return jax.lax.map(lambda h_bsd: fn(unembed(weights, self.spec, h_bsd)), h_pbsd,
                           batch_size=self.global_batch)

    def generate(self, weights, cand, tokens_bs, mask_bs, *, max_new_tokens: int,
                 eos_ids: tuple[int, ...], pad_id: int, image=None):
        return population_generate(weights, self.spec, self.path_spec, cand["genomes"], tokens_bs,
                                   mask_bs, max_new_tokens=max_new_tokens, eos_ids=eos_ids,
                                   pad_id=pad_id, image=image)

    def memory(self, rows: int, seq: int, new_tokens: int = 0, model_axis: int = 1):
        """(bytes per candidate, per candidate of the head map) of one batch, as
        `memory_model.Bytes` (memory_model.py holds the formulas): no weights are per candidate."""
        lo, hi = self.path_spec.window
        return dfs_candidate_bytes(self.spec, hi - lo, self.dtype, Workload(rows, seq, new_tokens),
                                   model_axis)

    def fixed_memory(self, model_axis: int = 1, work=()) -> int:
        return 0


class DFSSearch:
    """The `Search` of data-flow-space evolution over sources (A, B)."""

    kind = "dfs"

    def __init__(self, cfg, sources: tuple[Path, Path], path_spec: PathSpec, vision=None):
        self.cfg, self.sources, self.path_spec = cfg, tuple(sources), path_spec
        self.vision = vision  # evolve/vision.py: a VLM's frozen vision side, or None
        self.dtype = cfg.compute.dtype or source_reader(sources[0]).dtype(
            "model.embed_tokens.weight")
        self.model = None    # DFSModel, after `load()` (it needs the stack's spec)
        self.weights = None  # the stack's params, after `load()`
        self.stack = None

    @property
    def num_dims(self) -> int:
        return self.path_spec.num_genes

    def _stack_layout(self):
        """(stack spec, A's HF config) from the configs alone: A's architecture with A's layers
        then B's (`dfs.stack_sources` without the tensors)."""
        (_, a_cfg, a_spec), (_, _, b_spec) = (source_config(p) for p in self.sources)
        return a_spec.with_num_layers(a_spec.sliding_layers + b_spec.sliding_layers), a_cfg

    def weight_layout(self) -> tuple:
        """(stack spec, ShapeDtypeStructs of the stack's params), before loading."""
        spec, dt = self._stack_layout()[0], DTYPES[self.dtype]
        shapes = {n: jax.ShapeDtypeStruct(spec.global_shape(n), dt) for n in spec.global_tensors}
        shapes["layers"] = {n: jax.ShapeDtypeStruct((spec.num_layers,) + spec.layer_shape(n), dt)
                            for n in spec.layer_tensors}
        return spec, shapes

    def _read_stack(self, mesh) -> Checkpoint:
        """The source stack (`dfs.stack_sources`) as global arrays on `mesh`, each process
        reading only the blocks its devices hold."""
        spec, a_cfg = self._stack_layout()
        readers = [source_reader(p) for p in self.sources]
        shapes = self.weight_layout()[1]
        shardings = weight_shardings(mesh, spec, shapes)
        dt = DTYPES[self.dtype]
        a_layers = readers[0].spec.num_layers

        def layer_block(name):
            def read_one(ids, own):
                src, layer = (0, ids[0]) if ids[0] < a_layers else (1, ids[0] - a_layers)
                return readers[src].read_slice(layer_hf_name(name, layer, spec), own, dt)
            return read_one

        params = {n: read_global(shapes[n].shape, dt, shardings[n], 0, lambda ids, own, n=n:
                                 readers[0].read_slice(global_hf_name(n), own, dt))
                  for n in spec.global_tensors}
        params["layers"] = {n: read_global(shapes["layers"][n].shape, dt, shardings["layers"][n],
                                           1, layer_block(n)) for n in spec.layer_tensors}
        return Checkpoint(spec=spec, params=params, config=a_cfg, source_dir=self.sources[0])

    def load(self, mesh=None):
        """Read the stack onto `mesh` (default: the first local device alone)."""
        self.stack = self._read_stack(mesh or first_device_mesh())
        self.weights = self.stack.params
        generic = dataclasses.replace(self.path_spec, source_names=_GENERIC_NAMES[:2])
        self.model = DFSModel(self.stack.spec, generic, dtype=self.dtype)
        return self

    def initial_mean(self) -> np.ndarray:
        """The paper's start: indicators 0 except A's first-repetition layers at 2σ, W = 1."""
        key = jax.random.fold_in(jax.random.key(self.cfg.strategy.seed), DFS_MLP_STREAM)
        return np.asarray(initial_genome(self.path_spec, self.cfg.strategy.sigma, key),
                          np.float32)

    def clip(self, genomes):
        """Every real genome is a valid path: nothing to clip."""
        return np.asarray(genomes, np.float32), 0

    def describe(self, genome) -> dict:
        """The path: per usable slot, used (0/1) and the scale entering it (0 where unused), as
        the recipe heatmap reads them; "path" is the path.json document of the decoded path."""
        spec = self.path_spec
        genome = np.asarray(genome, np.float32)
        decoded = decode(spec, genome)
        used, scale = np.asarray(decoded.used_t), np.asarray(decoded.scale_t)
        lo, hi = spec.window
        bounds = np.cumsum((0,) + spec.source_layers)
        labels = []
        for t in range(lo, hi):
            layer = int(spec.slot_layers[t])
            src = int(np.searchsorted(bounds, layer, side="right") - 1)
            labels.append(f"slot {t}: {'AB'[src] if src < 2 else src} layer {layer - bounds[src]}")
        return {"groups": labels, "sources": [str(s) for s in self.sources],
                "values": {"used": used[lo:hi].astype(np.float64).tolist(),
                           "scale": np.round(np.where(used, scale, 0.0)[lo:hi].astype(np.float64),
                                             6).tolist()},
                "path": json.loads(decode_path(spec, genome).to_json())}

    def export(self, genome, key_data, out_dir, *, overwrite=False, note: str = "") -> Path:
        """The path folded into a plain checkpoint of A's architecture (+ path.json, path.png)."""
        stack = self.stack
        if stack is None or not all(x.is_fully_addressable for x in jax.tree.leaves(stack.params)):
            # No stack yet (`evomerge export`), or one spread over several hosts: read the files
            # onto this process's first device (the fold reads one tensor at a time from it).
            stack = self._read_stack(first_device_mesh())
        path = decode_path(self.path_spec, np.asarray(genome, np.float32))
        write = lambda out, overwrite: save_path_model(  # noqa: E731
            stack, path, out, overwrite=overwrite, tokenizer_from=self.cfg.tokenizer)
        if self.vision is not None:  # the folded language tower in a copy of the VLM
            return export_as_vlm(self.vision, write, Path(out_dir), overwrite=overwrite)
        return write(out_dir, overwrite)


def _vision(cfg, a: Path):
    """The run's vision side (None without vision_model), checked against model A's spec."""
    vision = vision_for(cfg)
    if vision is not None:
        vision.check_language(source_config(a)[2], f"model A {a}")
    return vision


def dfs_search_for(cfg: EvolveConfig) -> DFSSearch:
    """The search of a `search: dfs` config, checked, no weights loaded (for export)."""
    a, b = dfs_sources(cfg)
    path_spec = check_dfs_models(a, b, cfg.dfs or DFSSection())[0]
    return DFSSearch(cfg, (a, b), path_spec, _vision(cfg, a))


def prepare_dfs(cfg: EvolveConfig, log=print, a_stand_in: Path | None = None):
    """The registry's `prepare` for `search: dfs`: (search, tasks, tokenizer, strategy), no weights loaded.
    `a_stand_in` replaces A for the checks (ps+dfs: the base model stands for the PS result)."""
    a, b = dfs_sources(cfg)
    a = a_stand_in or a
    path_spec, hf_config = check_dfs_models(a, b, cfg.dfs or DFSSection())
    vision = _vision(cfg, a)
    tokenizer = load_tokenizer(tokenizer_dir(cfg, a))
    tasks = load_tasks(cfg.tasks, tokenizer, hf_config.get("max_position_embeddings"), vision)
    search = DFSSearch(cfg, (a, b), path_spec, vision)
    strategy = build_strategy(cfg.strategy, search.num_dims)
    return search, tasks, tokenizer, strategy
