"""The memory planner: bytes per device of a population pass, from shapes alone.

Every byte formula of the engine lives here: `PSModel.memory`, `DFSModel.memory` and
`Evaluator._plan` call these functions, and `evomerge plan` (`plan_memory`) applies them to a
config without loading any weight (config.json and safetensors headers only; task files are
tokenized when present, else a row length is assumed).

What a device holds during the pass (DESIGN.md section 3, idea 1):

    resident     the base and K sources in the forward dtype, and for the magnitude sparsifiers
                 (TIES, breadcrumbs) their sorted |task vector| tables in float32; a mesh `model`
                 axis of size M splits what mesh.py splits (attention heads, MLP units,
                 vocabulary rows) M ways, with the merge buffers and activations that follow them
    shared       the layer being merged: its K task vectors in float32, once per device
    per candidate (x candidates per device), during the layer scan: the merged layer with its
                 float32 merge temporaries, the layer's activations and attention scores, the KV
                 cache of a generate task, and the merged embed/head a generate task keeps
    per global candidate (x global_batch), during the global-tensor map of the teacher-forced
                 rows: an embedding or LM-head merge with its temporaries, and its logits

The scan and the map run one after the other and XLA reuses the buffers of one for the other, so
the peak is resident + the larger of the two (teacher-forced rows and generate tasks likewise).

The constants were fitted to XLA's buffer assignment (`compiled.memory_analysis()`) of the float32
pass on CPU (tests/test_memory_plan.py checks a real run). They are estimates for choosing chunk
sizes and device counts, with margin (the policy keeps 25% of the free memory for the global map);
XLA:CPU also upcasts bfloat16 matmuls to float32, so a bfloat16 pass there takes more than planned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from ..arch import ModelSpec
from ..errors import ConfigError
from .mesh import split_axis

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
F32 = 4
SCAN_SHARE = 0.75  # of a device's free memory: the layer scan's candidates; the rest: global map
GiB = 2**30
KV_COPIES = 2  # the decode loop's carried caches and the layer scan's updated ones


@dataclass(frozen=True)
class Workload:
    """One batch every candidate runs: `rows` teacher-forced rows of `seq` tokens, or (generate,
    `new_tokens` > 0) `rows` prompts of `seq` tokens decoded `new_tokens` steps."""

    rows: int
    seq: int
    new_tokens: int = 0


@dataclass(frozen=True)
class Bytes:
    """A breakdown of bytes; every field a plan line."""

    merge: int = 0        # merged tensors and their float32 merge temporaries
    activations: int = 0  # hidden states, MLP and attention temporaries (scores included)
    kv_cache: int = 0
    globals: int = 0      # merged embed / LM head held per candidate (generate)
    logits: int = 0

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    def __int__(self) -> int:
        return self.total

    def __add__(self, other: "Bytes") -> "Bytes":
        return Bytes(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def __mul__(self, n: int) -> "Bytes":
        return Bytes(*(getattr(self, f.name) * n for f in fields(self)))


def split_of(spec: ModelSpec, name: str, model_axis: int) -> int:
    """Ways tensor `name` splits over a model axis of `model_axis` devices (1: replicated), as
    mesh.py lays the weights out (heads, MLP units, vocabulary rows)."""
    return 1 if split_axis(spec, name, model_axis) is None else model_axis


def layer_elements(spec: ModelSpec, model_axis: int = 1) -> int:
    """Elements of one layer on one device."""
    return sum(math.prod(spec.layer_shape(n)) // split_of(spec, n, model_axis)
               for n in spec.layer_tensors)


def vocab_elements(spec: ModelSpec, model_axis: int = 1) -> int:
    """Elements of one embedding (or LM head) matrix on one device."""
    return spec.vocab_size * spec.hidden_size // split_of(spec, "embed", model_axis)


def model_elements(spec: ModelSpec, model_axis: int = 1) -> int:
    """Elements of one model on one device."""
    glob = sum(math.prod(spec.global_shape(n)) // split_of(spec, n, model_axis)
               for n in spec.global_tensors)
    return glob + spec.num_layers * layer_elements(spec, model_axis)


def _axis(size: int, model_axis: int) -> int:
    return size // model_axis if size % model_axis == 0 else size


def activation_bytes(spec: ModelSpec, w: Workload, dtype: str, model_axis: int = 1) -> Bytes:
    """One candidate's layer application: activations of the prompt (teacher rows or the
    prefill), attention scores in float32, the KV cache (generate) and per-step logits."""
    b = DTYPE_BYTES[dtype]
    tokens, keys = w.rows * w.seq, w.seq + w.new_tokens
    ff = _axis(spec.intermediate_size, model_axis)
    act = tokens * (2 * spec.hidden_size + ff) * F32
    scores = w.rows * _axis(spec.num_heads, model_axis) * w.seq * keys * F32
    if not w.new_tokens:
        return Bytes(activations=act + scores)
    kv = 2 * w.rows * keys * _axis(spec.num_kv_heads, model_axis) * spec.head_dim * b
    return Bytes(activations=act + scores, kv_cache=KV_COPIES * spec.num_layers * kv,
                 logits=3 * w.rows * _axis(spec.vocab_size, model_axis) * F32)


def ps_candidate_bytes(spec: ModelSpec, num_sources: int, dtype: str, w: Workload,
                       model_axis: int = 1) -> tuple[Bytes, Bytes]:
    """(per candidate of the layer scan, per candidate of the global-tensor map) of one PS
    workload. A generate task merges embed and head once per candidate and keeps them."""
    k, b = num_sources, DTYPE_BYTES[dtype]
    vocab = vocab_elements(spec, model_axis)
    heads = 1 if spec.tie_word_embeddings else 2
    scan = Bytes(merge=layer_elements(spec, model_axis) * F32 * (k + 1))
    scan = scan + activation_bytes(spec, w, dtype, model_axis)
    if w.new_tokens:  # embed and head merged for all candidates at once (vmap), then kept
        return scan + Bytes(globals=heads * vocab * b + vocab * F32 * (k + 2)), Bytes()
    return scan, Bytes(globals=vocab * F32 * (2 * k + 2),
                       logits=w.rows * w.seq * _axis(spec.vocab_size, model_axis) * F32)


def dfs_candidate_bytes(spec: ModelSpec, window: int, dtype: str, w: Workload,
                        model_axis: int = 1) -> tuple[Bytes, Bytes]:
    """The same for a DFS pass over a stack of `spec.num_layers` layers with `window` usable
    slots: no per-candidate weights; one KV cache per usable slot."""
    slot = activation_bytes(spec, w, dtype, model_axis)
    scan = Bytes(activations=slot.activations, logits=slot.logits,
                 kv_cache=slot.kv_cache // spec.num_layers * window)
    if w.new_tokens:
        return scan, Bytes()
    return scan, Bytes(logits=3 * w.rows * w.seq * _axis(spec.vocab_size, model_axis) * F32)


def shared_merge_bytes(spec: ModelSpec, num_sources: int, model_axis: int = 1) -> int:
    """The K float32 task vectors of the layer being merged, once per device (PS)."""
    return layer_elements(spec, model_axis) * F32 * num_sources


def pass_bytes(memory, workloads):
    """A population model's `memory(rows, seq, new_tokens)` (a pair of ints or of `Bytes`)
    over the workloads of one pass: the largest of each part, since the pass runs its batches
    one after the other (the teacher-forced rows, then each generate task) and XLA reuses the
    buffers of one for the next."""
    pairs = [memory(w.rows, w.seq, w.new_tokens) for w in workloads]
    if not pairs:
        return 0, 0
    return max((c for c, _ in pairs), key=int), max((g for _, g in pairs), key=int)


@dataclass(frozen=True)
class TaskShape:
    """What the planner needs of a task: its config, batch rows (choice: x choices) and padded
    row length (generate: prompt + max_new_tokens)."""

    cfg: object
    rows: int
    seq_len: int


def shape_of(task) -> TaskShape:
    """The shape of a loaded task (`tasks.TaskData`)."""
    data = task.splits["fitness"].arrays["tokens"]
    return TaskShape(task.cfg, task.cfg.batch_size * (data.shape[1] if data.ndim == 3 else 1),
                     task.seq_len)


def workloads(shapes) -> tuple[Workload, ...]:
    """The pass's batches: every teacher-forced task's rows in one (padded to the longest),
    then one per generate task."""
    shapes = list(shapes)
    teacher = [t for t in shapes if t.cfg.type != "generate"]
    out = [Workload(sum(t.rows for t in teacher), max(t.seq_len for t in teacher))
           ] if teacher else []
    return tuple(out) + tuple(Workload(t.rows, t.seq_len - t.cfg.max_new_tokens,
                                       t.cfg.max_new_tokens)
                              for t in shapes if t.cfg.type == "generate")


def choose_chunk(free: int, per_candidate: int, per_global: int, population: int, n_pop: int,
                 chunk_size: int | None = None, global_batch: int | None = None):
    """(candidates per device, global batch, fits): SCAN_SHARE of a device's free memory for the
    scan's candidates (at most the population's share), the rest for the global map;
    `chunk_size` / `global_batch` override. `fits`: the larger of the two phases (they run one
    after the other) fits in `free`."""
    per_candidate, per_global = max(per_candidate, 1), max(per_global, 1)
    local = max(1, int(max(free, 0) * SCAN_SHARE // per_candidate))
    local = min(local, -(-population // n_pop))
    if chunk_size:
        local = max(1, -(-chunk_size // n_pop))
    if global_batch is None:
        global_batch = max(1, min(local, int(max(free, 0) * (1 - SCAN_SHARE) // per_global)))
    fits = max(local * per_candidate, global_batch * per_global) <= free
    return local, global_batch, fits


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

    @property
    def chunk(self) -> int:
        """Candidates per device call (all devices of the population axis together)."""
        return self.local * self.mesh[0]

    @property
    def calls(self) -> int:
        return -(-self.population // self.chunk)

    @property
    def total(self) -> int:
        """The peak: the larger of the two phases, each with the resident weights."""
        return max(sum(v[0] for v in self.lines.values()), sum(v[1] for v in self.lines.values()))


def plan_lines(weights: int, tables: int, shared: int, scan: Bytes, glob: Bytes, local: int,
               global_batch: int) -> dict[str, tuple[int, int]]:
    """Bytes per device by line item, (during the layer scan, during the global-tensor map)."""
    c, g = scan * local, glob * global_batch
    return {"source weights": (weights, weights), "magnitude tables": (tables, tables),
            "merge buffers (per layer)": (shared + c.merge, 0),
            "activations": (c.activations, 0), "KV caches": (c.kv_cache, 0),
            "global tensors (embed, lm_head)": (c.globals, g.globals),
            "logits": (c.logits, g.logits)}


# ---- planning a config (`evomerge plan`) -------------------------------------------------------
ASSUMED_CHOICES = 4  # a choice task's options per row when its files are absent


def parse_mesh(text: str):
    """'4x2' -> compute.mesh's section (pop 4, model 2); 'auto' -> 'auto'."""
    from .config import MeshSection

    if text.strip().lower() == "auto":
        return "auto"
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(f"--mesh {text!r}: write it as POPxMODEL (e.g. 4x2) or auto")
    return MeshSection(pop=int(parts[0]), model=int(parts[1]))


def _task_shapes(cfg, tokenizer_dir, context, seq_len: int):
    """Shapes of the config's tasks: tokenized from their files when all three splits exist
    (the row lengths evolve will use), else `seq_len` tokens per row assumed (noted)."""
    from .tasks import _pad_to, load_task, load_tokenizer

    shapes, notes, tokenizer = [], [], None
    for task in cfg.tasks:
        files = [getattr(task.data, s) for s in ("fitness", "validation", "test")]
        if all(f.is_file() for f in files):
            tokenizer = tokenizer or load_tokenizer(tokenizer_dir)
            shapes.append(shape_of(load_task(task, tokenizer, context)))
            continue
        new = task.max_new_tokens if task.type == "generate" else 0
        rows = task.batch_size * (ASSUMED_CHOICES if task.type == "choice" else 1)
        shapes.append(TaskShape(task, rows, _pad_to(seq_len + new)))
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

    def resident(self, m: int, dtype: str) -> tuple[int, int, int]:
        """(weights, tables, shared merge buffer) on one device of a model axis of size m."""
        one = model_elements(self.spec, m)
        if not self.sources:
            return one * DTYPE_BYTES[dtype], 0, 0
        return ((1 + self.sources) * one * DTYPE_BYTES[dtype],
                self.sources * one * F32 if self.tables else 0,
                shared_merge_bytes(self.spec, self.sources, m))

    def memory(self, m: int, dtype: str):
        if self.sources:
            return lambda r, s, n: ps_candidate_bytes(self.spec, self.sources, dtype,
                                                      Workload(r, s, n), m)
        return lambda r, s, n: dfs_candidate_bytes(self.spec, self.window, dtype,
                                                   Workload(r, s, n), m)


def _stage(cfg, a_stand_in=None) -> _Stage:
    from ..checkpoint import TensorReader, read_config
    from ..merge.task_arithmetic import PRESETS
    from .genome import make_layout
    from .ps import _TABLE_SPARSIFIERS, check_models

    if cfg.search == "ps":
        spec, hf_config = check_models(cfg)
        k = len(cfg.models)
        return _Stage(spec, k, PRESETS[cfg.merge.method].sparsifier in _TABLE_SPARSIFIERS, 0,
                      TensorReader(cfg.base_model).dtype("model.embed_tokens.weight"),
                      make_layout(cfg, k, spec.num_layers).num_dims, hf_config,
                      cfg.tokenizer or cfg.base_model)
    from .config import DFSSection
    from .dfs_search import check_dfs_models, dfs_sources

    a, b = dfs_sources(cfg)
    a = a_stand_in or a
    path_spec, hf_config = check_dfs_models(a, b, cfg.dfs or DFSSection())
    spec_a, spec_b = read_config(a)[2], read_config(b)[2]
    lo, hi = path_spec.window
    return _Stage(spec_a.with_num_layers(spec_a.sliding_layers + spec_b.sliding_layers), 0, False,
                  hi - lo, TensorReader(a).dtype("model.embed_tokens.weight"),
                  path_spec.num_genes, hf_config, cfg.tokenizer or a)


def plan_memory(cfg, devices: int | None = None, device_memory: int | str | None = None,
                mesh=None, *, seq_len: int = 256, check: bool = True,
                a_stand_in=None) -> MemoryPlan:
    """The memory plan of one search stage (`search: ps` or `dfs`) on `devices` devices of
    `device_memory` bytes each (default: what evolve would see on this machine's first device),
    with the mesh `mesh` ('POPxMODEL' or 'auto'; default the config's `compute.mesh`, chosen as
    evolve chooses it, mesh.py). Reads config.json, safetensors headers and task files only.
    `check`: raise `ConfigError` (one line, saying what to change) when it cannot fit."""
    from ..errors import CheckpointError
    from ..fileio import parse_size
    from .mesh import mesh_sizes

    if cfg.search == "ps+dfs":
        raise ConfigError("plan_memory plans one stage; plan_stages plans both of ps+dfs")
    if device_memory is None:
        import jax

        from .evaluate import available_memory
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
    shapes, task_notes = _task_shapes(cfg, stage.tokenizer,
                                      stage.hf_config.get("max_position_embeddings"), seq_len)

    def fit(m: int, dtype: str, shapes, pop: int = pop) -> tuple:
        weights, tables, shared = stage.resident(m, dtype)
        scan, glob = pass_bytes(stage.memory(m, dtype), workloads(shapes))
        free = device_memory - weights - tables - shared
        local, gb, fits = choose_chunk(free, scan.total, glob.total, population, pop,
                                       cfg.compute.chunk_size)
        return weights, tables, shared, scan, glob, local, gb, fits

    weights, tables, shared, scan, glob, local, gb, fits = result = fit(m, dtype, shapes)
    problem = None if fits else _advice(cfg, device_memory, (pop, m), dtype, shapes, fit, result)
    plan = MemoryPlan(cfg.search, devices, (pop, m), device_memory, dtype, population,
                      workloads(shapes), tuple(notes + task_notes), weights, tables, shared, scan,
                      glob, local, gb, fits, problem,
                      plan_lines(weights, tables, shared, scan, glob, local, gb))
    if check and problem:
        raise ConfigError(problem)
    return plan


def plan_stages(cfg, devices=None, device_memory=None, mesh=None, **options) -> list[MemoryPlan]:
    """One plan per stage: PS and DFS for `search: ps+dfs` (the DFS stage's A has the base
    model's shapes), else the config's own."""
    if cfg.search != "ps+dfs":
        return [plan_memory(cfg, devices, device_memory, mesh, **options)]
    from .dfs_search import stage_configs

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
            trial[i] = TaskShape(shape.cfg, shape.rows * mid // shape.cfg.batch_size,
                                 shape.seq_len)
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
    from rich.table import Table

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
    table.caption = "\n".join([verdict, f"batches (rows x tokens): {batches}", *plan.notes])
    return table
