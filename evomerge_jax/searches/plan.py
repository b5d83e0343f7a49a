"""`evomerge plan`: the memory per device of an evolve config's pass, planned without loading any
weight (config.json and safetensors headers only; task files are tokenized when present, else a
row length is assumed), with the population chunk the evaluator would use, and a refusal that
says what to change when it cannot fit. The byte formulas are memory_model.py's, the ones the
evaluator itself uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import jax
from rich.table import Table

from ..arch import ModelSpec
from ..sources import source_config, source_reader
from ..dfs.search import check_dfs_models, dfs_sources
from ..errors import CheckpointError, ConfigError
from ..evolve.config_sections import DFSSection, GradientSection, MeshSection
from ..evolve.evaluate import available_memory
from ..evolve.task_types import TASK_TYPES
from ..evolve.task_data import pad_to
from ..evolve.tasks import load_task, load_tokenizer
from ..evolve.vision import tokenizer_dir, vision_for
from ..fileio import parse_size
from ..evolve.method_genes import method_parameters, uses_tables
from ..parallel.memory_model import (DTYPE_BYTES, F32, Bytes, GiB, TaskShape, Workload,
                                     choose_chunk, dfs_candidate_bytes, generation_mode,
                                     gradient_step_bytes, model_elements, pass_bytes,
                                     ps_candidate_bytes, shape_of,
                                     shared_merge_bytes, workloads)
from ..parallel.mesh import mesh_sizes
from ..ps.genome import make_layout
from ..ps.search import check_models
from .gradient_hybrid import evolved_mask
from .ps_dfs import stage_configs


@dataclass(frozen=True)
class MemoryPlan:
    """What one device holds, and the population chunk the evaluator would use."""

    search: str
    devices: int
    mesh: tuple[int, int]              # (pop, model)
    device_memory: int
    dtype: str
    population: int
    workloads: tuple[Workload, ...]
    notes: tuple[str, ...]             # assumptions (row lengths of absent task files, ...)
    weights: int                       # base + sources (PS) or the layer stack (DFS)
    tables: int                        # sorted-magnitude tables (TIES-family PS)
    shared: int                        # the layer being merged (PS), once per device
    per_candidate: Bytes
    per_global: Bytes
    local: int                         # candidates per device per call
    global_batch: int
    fits: bool
    problem: str | None = None         # why it does not fit, and what to change
    lines: dict = field(default_factory=dict)
    generation: str | None = None      # PS generate tasks: "cached" or "remerge" (None: neither)
    gradient: Workload | None = None   # search gradient: the batch of one step
    gradient_step: int = 0             # its forward + backward temporaries (beside the weights)

    @property
    def chunk(self) -> int:
        """Candidates per device call (all devices of the population axis together)."""
        return self.local * self.mesh[0]

    @property
    def calls(self) -> int:
        return -(-self.population // self.chunk)

    @property
    def total(self) -> int:
        """The peak: the larger of the two phases (and of a gradient step), each with the
        resident weights."""
        return max(sum(v[0] for v in self.lines.values()), sum(v[1] for v in self.lines.values()),
                   self.weights + self.tables + self.gradient_step)


def plan_lines(weights: int, tables: int, shared: int, scan: Bytes, glob: Bytes, local: int,
               global_batch: int) -> dict[str, tuple[int, int]]:
    """Bytes per device by line item, (during the layer scan, during the global-tensor map)."""
    c, g = scan * local, glob * global_batch
    return {"source weights": (weights, weights), "magnitude tables": (tables, tables),
            "merge buffers (per layer)": (shared + c.merge, 0),
            "activations": (c.activations, 0), "KV caches": (c.kv_cache, 0),
            "global tensors (embed, lm_head)": (c.globals, g.globals),
            "merged layers (cached generation)": (c.layers, 0),
            "logits": (c.logits, g.logits)}


# ---- planning a config (`evomerge plan`) -------------------------------------------------------
ASSUMED_CHOICES = 4  # a choice task's options per row when its files are absent


def parse_mesh(text: str):
    """'4x2' -> compute.mesh's section (pop 4, model 2); 'auto' -> 'auto'."""
    if text.strip().lower() == "auto":
        return "auto"
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--mesh {text!r}: write it as POPxMODEL (e.g. 4x2) or auto")
    return MeshSection(pop=int(parts[0]), model=int(parts[1]))


def _task_shapes(cfg, tokenizer_dir, context, seq_len: int):
    """Shapes of the config's tasks: tokenized from their files when all three splits exist
    (the row lengths evolve will use), else `seq_len` tokens per row assumed (noted)."""
    shapes, notes, tokenizer = [], [], None
    for task in cfg.tasks:
        files = [getattr(task.data, s) for s in ("fitness", "validation", "test")
                 ] if task.data is not None else []  # lm_eval: loaded by lm-eval
        if all(f.is_file() for f in files):
            tokenizer = tokenizer or load_tokenizer(tokenizer_dir)
            shapes.append(shape_of(load_task(task, tokenizer, context, vision_for(cfg))))
            continue
        kind = TASK_TYPES[task.type]
        new = task.max_new_tokens if kind.generates else 0
        rows = task.batch_size * (ASSUMED_CHOICES if kind.per_choice else 1)
        shapes.append(TaskShape(task, rows, pad_to(seq_len + new), new))
        notes.append(f"task {task.name!r}: data files absent; {seq_len}-token "
                     f"{'prompts' if new else 'rows'} assumed (--seq-len)")
    return shapes, notes


@dataclass(frozen=True)
class _Stage:
    """One search stage's shapes, read from config.json and safetensors headers only."""

    spec: ModelSpec
    sources: int          # K (PS); 0 for DFS
    tables: bool          # PS with a magnitude sparsifier
    window: int           # DFS: usable slots
    stored: str           # the checkpoint's dtype
    genes: int
    hf_config: dict
    tokenizer: object

    def resident(self, m: int, dtype: str, work=()) -> tuple[int, int, int]:
        """(weights, tables, shared merge buffer and scan step) on one device of a model axis of
        size m, for the workloads `work`."""
        one = model_elements(self.spec, m)
        if not self.sources:
            return one * DTYPE_BYTES[dtype], 0, 0
        return ((1 + self.sources) * one * DTYPE_BYTES[dtype],
                self.sources * one * F32 if self.tables else 0,
                shared_merge_bytes(self.spec, self.sources, m, dtype, work))

    def memory(self, m: int, dtype: str, cached: bool = False):
        if self.sources:
            return lambda r, s, n: ps_candidate_bytes(self.spec, self.sources, dtype,
                                                      Workload(r, s, n), m, cached)
        return lambda r, s, n: dfs_candidate_bytes(self.spec, self.window, dtype,
                                                   Workload(r, s, n), m)


def _stage(cfg, a_stand_in=None) -> _Stage:
    if cfg.search in ("ps", "pareto", "m2n2", "gradient"):  # PS's genome and population pass
        spec, hf_config = check_models(cfg)
        k = len(cfg.models)
        return _Stage(spec, k, uses_tables(cfg.merge.method), 0,
                      source_reader(cfg.base_model).dtype("model.embed_tokens.weight"),
                      make_layout(cfg, k, spec.num_layers).num_dims, hf_config,
                      tokenizer_dir(cfg, cfg.base_model))
    a, b = dfs_sources(cfg)
    a = a_stand_in or a
    path_spec, hf_config = check_dfs_models(a, b, cfg.dfs or DFSSection())
    spec_a, spec_b = source_config(a)[2], source_config(b)[2]
    lo, hi = path_spec.window
    return _Stage(spec_a.with_num_layers(spec_a.sliding_layers + spec_b.sliding_layers), 0, False,
                  hi - lo, source_reader(a).dtype("model.embed_tokens.weight"),
                  path_spec.num_genes, hf_config, tokenizer_dir(cfg, a))


def plan_memory(cfg, devices: int | None = None, device_memory: int | str | None = None,
                mesh=None, *, seq_len: int = 256, check: bool = True,
                a_stand_in=None) -> MemoryPlan:
    """The memory plan of one search stage (`search: ps` or `dfs`) on `devices` devices of
    `device_memory` bytes each (default: what evolve would see on this machine's first device),
    with the mesh `mesh` ('POPxMODEL' or 'auto'; default the config's `compute.mesh`, chosen as
    evolve chooses it, mesh.py). Reads config.json, safetensors headers and task files only.
    `check`: raise `ConfigError` (one line, saying what to change) when it cannot fit."""
    if cfg.search == "ps+dfs":
        raise ConfigError("plan_memory plans one stage; plan_stages plans both of ps+dfs")
    if device_memory is None:
        device_memory = available_memory(jax.local_devices()[0])
    try:
        device_memory = parse_size(device_memory)
    except CheckpointError:
        raise ConfigError(f"device memory {device_memory!r}: write it like 32GB, 16GiB or "
                          "80GB") from None
    stage = _stage(cfg, a_stand_in)
    dtype = cfg.compute.dtype or stage.stored
    setting = parse_mesh(mesh) if isinstance(mesh, str) else (mesh or cfg.compute.mesh)
    if devices is None:  # an explicit mesh says how many
        devices = setting.pop * setting.model if getattr(setting, "pop", None) else 1
    notes: list[str] = []
    pop, m = mesh_sizes(setting, devices, lambda m: sum(stage.resident(m, dtype)[:2]),
                        device_memory, log=notes.append)
    population = cfg.strategy.population_for(stage.genes)
    if cfg.search == "m2n2":  # its archive (generation 0) or its children per pass
        population = max(cfg.m2n2.archive_size, cfg.m2n2.children) if cfg.m2n2 else 8
    if cfg.search == "gradient":  # one candidate: the step's program, and validation passes
        hybrid = (cfg.gradient or GradientSection()).evolve  # a strategy's population around it
        population = cfg.strategy.population_for(int(evolved_mask(
            make_layout(cfg, stage.sources, stage.spec.num_layers), hybrid).sum())) if hybrid else 1
    shapes, task_notes = _task_shapes(cfg, stage.tokenizer,
                                      stage.hf_config.get("max_position_embeddings"), seq_len)

    def fit(m: int, dtype: str, shapes, pop: int = pop, cached=None) -> tuple:
        cached = generation == "cached" if cached is None else cached
        weights, tables, shared = stage.resident(m, dtype, workloads(shapes))
        scan, glob = pass_bytes(stage.memory(m, dtype, cached), workloads(shapes))
        free = device_memory - weights - tables - shared
        local, gb, fits = choose_chunk(free, scan.total, glob.total, population, pop,
                                       cfg.compute.chunk_size)
        return weights, tables, shared, scan, glob, local, gb, fits

    generation = None
    if stage.sources and any(t.new_tokens for t in shapes):  # as the evaluator chooses it
        generation = generation_mode(cfg.compute.generation, lambda: fit(
            m, dtype, shapes, cached=True)[-1])
        if generation == "remerge" and cfg.compute.generation == "auto":
            notes.append("generate tasks re-merge every layer at each decode step: one candidate "
                         "with its merged layers kept does not fit")
    weights, tables, shared, scan, glob, local, gb, fits = result = fit(m, dtype, shapes)
    problem = None if fits else _advice(cfg, device_memory, (pop, m), dtype, shapes, fit, result)
    step, step_bytes = None, 0
    if cfg.search == "gradient":
        step = gradient_workload(cfg, shapes)
        sparsified = "density" in method_parameters(cfg.merge.method)
        step_bytes = gradient_step_bytes(stage.spec, stage.sources, step, m, sparsified)
        if problem is None and weights + tables + step_bytes > device_memory:
            fits, problem = False, _gradient_advice(cfg, device_memory, (pop, m), weights + tables,
                                                    step_bytes, step)
    plan = MemoryPlan(cfg.search, devices, (pop, m), device_memory, dtype, population,
                      workloads(shapes), tuple(notes + task_notes), weights, tables, shared, scan,
                      glob, local, gb, fits, problem,
                      plan_lines(weights, tables, shared, scan, glob, local, gb), generation,
                      step, step_bytes)
    if check and problem:
        raise ConfigError(problem)
    return plan


def gradient_workload(cfg, shapes) -> Workload:
    """The batch of one gradient step: `gradient.batch` rows of every task (default its
    batch_size), padded to the longest task's rows."""
    batch = (cfg.gradient or GradientSection()).batch
    return Workload(sum(batch or s.cfg.batch_size for s in shapes),
                    max(s.seq_len for s in shapes))


def _gradient_advice(cfg, device_memory, mesh, resident, step_bytes, step) -> str:
    fixes = ["a smaller gradient.batch (rows per task per step)"]
    if (cfg.compute.dtype or "float32") == "float32":
        fixes.append("compute.dtype: bfloat16")
    fixes += [f"a model axis of {2 * mesh[1]} (--mesh {mesh[0]}x{2 * mesh[1]})",
              "devices with more memory"]
    return (f"gradient does not fit on mesh {mesh[0]}x{mesh[1]}: one step ({step.rows} rows x "
            f"{step.seq} tokens, forward and backward through the merge) needs "
            f"{_gib(step_bytes)} beyond the {_gib(resident)} of weights, more than the "
            f"{_gib(device_memory - resident)} free of {_gib(device_memory)}; to fit, use "
            + "; or ".join(fixes))


def plan_stages(cfg, devices=None, device_memory=None, mesh=None, **options) -> list[MemoryPlan]:
    """One plan per stage: PS and DFS for `search: ps+dfs` (the DFS stage's A has the base
    model's shapes), else the config's own."""
    if cfg.search != "ps+dfs":
        return [plan_memory(cfg, devices, device_memory, mesh, **options)]
    ps_cfg, dfs_cfg = stage_configs(cfg)
    return [plan_memory(ps_cfg, devices, device_memory, mesh, **options),
            plan_memory(dfs_cfg, devices, device_memory, mesh, a_stand_in=cfg.base_model,
                        **options)]


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / 2**20:.1f} MiB"


def _advice(cfg, device_memory, mesh, dtype, shapes, fit, result) -> str:
    """One line: what does not fit, and each change that would make it fit."""
    (pop, m), (weights, tables, shared, scan, glob, local, gb, _) = mesh, result
    resident = weights + tables + shared
    fixes = []
    wider = next((w for w in (2, 4, 8, 16, 32, 64) if w > m and fit(w, dtype, shapes, 1)[-1]),
                 None)
    if wider:
        fixes.append(f"a model axis of {wider} (--mesh {pop}x{wider}: {pop * wider} devices, "
                     "or more devices)")
    fitting = (device_memory - resident) // max(scan.total, 1)
    if cfg.compute.chunk_size and fitting >= 1:
        fixes.append(f"compute.chunk_size at most {fitting * pop}")
    for i, shape in enumerate(shapes if resident < device_memory else ()):
        lo, hi = 0, shape.cfg.batch_size - 1
        while lo < hi:  # the largest batch_size of this task alone that fits
            mid = (lo + hi + 1) // 2
            trial = list(shapes)
            trial[i] = dataclasses.replace(shape, rows=shape.rows * mid // shape.cfg.batch_size)
            lo, hi = (mid, hi) if fit(m, dtype, trial)[-1] else (lo, mid - 1)
        if lo:
            fixes.append(f"tasks[{i}].batch_size ({shape.cfg.name}) at most {lo}")
    if dtype == "float32":
        fixes.append("compute.dtype: bfloat16")
    if tables:
        fixes.append("a merge method without magnitude tables (dare_ties)")
    fixes.append("devices with more memory")
    if resident > device_memory:
        what = f"the weights ({_gib(weights)}" + (
            f" + {_gib(tables)} of magnitude tables)" if tables else ")")
        head = f"{what} need {_gib(resident)} per device, more than its {_gib(device_memory)}"
    else:
        head = (f"{local} candidate(s) per device need "
                f"{_gib(max(local * scan.total, gb * glob.total))}"
                f" beyond the {_gib(resident)} of weights; {_gib(device_memory - resident)} of "
                f"{_gib(device_memory)} are free")
    return (f"{cfg.search} does not fit on mesh {pop}x{m}: {head}; to fit, use "
            + "; or ".join(fixes))


def plan_table(plan: MemoryPlan):
    """A rich Table of a plan: bytes per device by line item in each phase, against the device
    (in GiB, or MiB for devices under 4 GiB)."""
    pop, m = plan.mesh
    unit, scale = ("GiB", GiB) if plan.device_memory >= 4 * GiB else ("MiB", 2**20)
    table = Table(title=f"{plan.search}: memory per device ({plan.devices} device(s), mesh "
                        f"{pop}x{m}, {_gib(plan.device_memory)} each, {plan.dtype})",
                  min_width=78)
    table.add_column("item")
    table.add_column(f"layer scan, {unit}\n({plan.local} candidates)", justify="right")
    mapped = (f"({plan.global_batch} at a time)" if plan.per_global.total
              else "(none: no teacher-forced task)")
    table.add_column(f"global map, {unit}\n{mapped}", justify="right")
    for name, (scan, glob) in plan.lines.items():
        table.add_row(name, f"{scan / scale:.3f}", f"{glob / scale:.3f}")
    scan, glob = (sum(v[i] for v in plan.lines.values()) for i in (0, 1))
    table.add_row("total", f"{scan / scale:.3f}", f"{glob / scale:.3f}", style="bold")
    table.add_row("peak (the larger) / device memory", f"{plan.total / scale:.3f}",
                  f"{plan.device_memory / scale:.3f}")
    verdict = (f"{plan.chunk} candidates per call ({plan.local} per device x {pop}), "
               f"{plan.calls} call(s) per generation of {plan.population}" if plan.fits
               else f"does not fit: {plan.problem}")
    batches = ", ".join(f"{w.rows} x {w.seq}" + (f" + {w.new_tokens} new" if w.new_tokens else "")
                        for w in plan.workloads)
    modes = {"cached": "cached (every layer merged once per call, reused by all decode steps)",
             "remerge": "remerge (every layer re-merged at each decode step)"}
    generation = [f"generation: {modes[plan.generation]}"] if plan.generation else []
    if plan.gradient is not None:
        generation.append(f"gradient step (one candidate, forward + backward through the merge, "
                          f"{plan.gradient.rows} x {plan.gradient.seq}): "
                          f"{plan.gradient_step / scale:.3f} {unit} beside the weights")
    table.caption = "\n".join([verdict, f"batches (rows x tokens): {batches}", *generation,
                               *plan.notes])
    return table
