"""The memory model: bytes per device of a population pass, from shapes alone.

Every byte formula of the engine lives here: `PSModel.memory`, `DFSModel.memory` and
`Evaluator._plan` call these functions, and `evomerge plan` (searches/plan.py) applies them to a
config without loading any weight.

What a device holds during the pass (docs/design.md §2.3):

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
from dataclasses import dataclass, fields

from ..arch import ModelSpec
from .mesh import split_axis

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
F32 = 4
SCAN_SHARE = 0.75  # of a device's free memory: the layer scan's candidates; the rest: global map
GiB = 2**30
KV_COPIES = 2  # the decode loop's carried caches and the layer scan's updated ones
HIDDEN_COPIES = 2  # a candidate's hidden state entering and leaving a layer


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
    layers: int = 0       # every merged layer kept per candidate (generate, cached mode)
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
    if spec.num_experts:  # every expert runs on every token (moe.py): U x (2F + D) per token
        ff = _axis(spec.num_experts, model_axis) * (2 * spec.intermediate_size + spec.hidden_size)
    act = tokens * (2 * spec.hidden_size + ff) * F32
    scores = w.rows * _axis(spec.num_heads, model_axis) * w.seq * keys * F32
    if not w.new_tokens:
        return Bytes(activations=act + scores)
    kv = 2 * w.rows * keys * _axis(spec.num_kv_heads, model_axis) * spec.head_dim * b
    return Bytes(activations=act + scores, kv_cache=KV_COPIES * spec.num_layers * kv,
                 logits=3 * w.rows * _axis(spec.vocab_size, model_axis) * F32)


def ps_candidate_bytes(spec: ModelSpec, num_sources: int, dtype: str, w: Workload,
                       model_axis: int = 1, cached: bool = False) -> tuple[Bytes, Bytes]:
    """(per candidate of the layer scan, per candidate of the global-tensor map) of one PS
    workload. In the scan a candidate keeps only its hidden state (the layer is merged and
    applied `merge_batch` candidates at a time: `ps_step_bytes`, counted once per device). A
    generate task also keeps per candidate its KV cache, the merged embed and head, and in the
    `cached` generation mode every merged layer (L layers in the forward dtype)."""
    k, b = num_sources, DTYPE_BYTES[dtype]
    vocab = vocab_elements(spec, model_axis)
    heads = 1 if spec.tie_word_embeddings else 2
    step = activation_bytes(spec, w, dtype, model_axis)
    scan = Bytes(activations=HIDDEN_COPIES * w.rows * w.seq * spec.hidden_size * F32,
                 kv_cache=step.kv_cache, logits=step.logits)
    if w.new_tokens:  # embed and head merged for all candidates at once (vmap), then kept
        kept = spec.num_layers * layer_elements(spec, model_axis) * b if cached else 0
        return scan + Bytes(globals=heads * vocab * b + vocab * F32 * (k + 2),
                            layers=kept), Bytes()
    return scan, Bytes(globals=vocab * F32 * (2 * k + 2),
                       logits=w.rows * w.seq * _axis(spec.vocab_size, model_axis) * F32)


def ps_step_bytes(spec: ModelSpec, num_sources: int, dtype: str, w: Workload,
                  model_axis: int = 1) -> int:
    """One candidate's step of the layer scan, whatever P is: its layer merged (float32 merge
    temporaries, K + 1 copies of the layer) and applied (activations and attention scores)."""
    merge = layer_elements(spec, model_axis) * F32 * (num_sources + 1)
    return merge + activation_bytes(spec, w, dtype, model_axis).activations


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


# `search: gradient`'s step (forward and backward through the merge of one candidate), fitted to
# XLA's buffer assignment of `gradient_loss.loss_and_grad` (float32, CPU; the tiny Llamas of
# tests/test_memory_plan.py: dare_ties over L = 4/8, K = 2/3, V = 2000/4000 and 192-512 tokens
# within 2%; task_arithmetic within 7%, over).
GRAD_SOURCE_COPIES = 2      # per source, sparsifying methods: its masked task vector, weighted
GRAD_LAYER_COPIES = 3.4     # per layer: the merged layer and its merge residuals
GRAD_STEP_LAYERS = 5        # one layer's backward temporaries, once
GRAD_VOCAB_COPIES = 10.6    # embed and head: merged, kept, and their gradients
GRAD_LOGIT_COPIES = 4.5     # per token: logits, log-softmax and their gradients (float32)
GRAD_SCORE_COPIES = 2       # per layer: attention scores and probabilities


def gradient_step_bytes(spec: ModelSpec, num_sources: int, w: Workload, model_axis: int = 1,
                        sparsified: bool = True) -> int:
    """Temporaries of one gradient step (`search: gradient`): the forward pass of one candidate
    through the merge with every value the backward pass needs kept (per layer: merge residuals,
    activations, attention scores; per source: its weighted task vector), and the backward's own
    temporaries; the resident weights are not included. `sparsified`: the method drops
    elements by a density (DARE, TIES, ...), whose masked task vectors are kept too."""
    layer, vocab = layer_elements(spec, model_axis) * F32, vocab_elements(spec, model_axis) * F32
    model = model_elements(spec, model_axis) * F32
    tokens = w.rows * w.seq
    ff = _axis(spec.intermediate_size, model_axis)
    act = tokens * (9 * spec.hidden_size + 4 * ff) * F32
    scores = GRAD_SCORE_COPIES * w.rows * _axis(spec.num_heads, model_axis) * w.seq ** 2 * F32
    logits = GRAD_LOGIT_COPIES * tokens * _axis(spec.vocab_size, model_axis) * F32
    return int(GRAD_SOURCE_COPIES * num_sources * model * sparsified
               + spec.num_layers * (GRAD_LAYER_COPIES * layer + act + scores)
               + GRAD_STEP_LAYERS * layer + GRAD_VOCAB_COPIES * vocab + logits)


def shared_merge_bytes(spec: ModelSpec, num_sources: int, model_axis: int = 1, dtype: str = "",
                       work=(), merge_batch: int = 1) -> int:
    """Once per device (PS): the K float32 task vectors of the layer being merged, and
    `merge_batch` candidates' steps of the layer scan (`ps_step_bytes`, the largest over the
    pass's workloads `work`)."""
    steps = max((ps_step_bytes(spec, num_sources, dtype, w, model_axis) for w in work),
                default=0)
    return layer_elements(spec, model_axis) * F32 * num_sources + merge_batch * steps


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
    new_tokens: int = 0  # tokens the pass decodes per row (0: a teacher-forced task)


def shape_of(task) -> TaskShape:
    """The shape of a loaded task (`tasks.TaskData`)."""
    data = task.splits["fitness"].arrays["tokens"]
    return TaskShape(task.cfg, task.cfg.batch_size * (data.shape[1] if data.ndim == 3 else 1),
                     task.seq_len, task.new_tokens)


def workloads(shapes) -> tuple[Workload, ...]:
    """The pass's batches: every teacher-forced task's rows in one (padded to the longest),
    then one per generate task."""
    shapes = list(shapes)
    teacher = [t for t in shapes if not t.new_tokens]
    out = [Workload(sum(t.rows for t in teacher), max(t.seq_len for t in teacher))
           ] if teacher else []
    return tuple(out) + tuple(Workload(t.rows, t.seq_len - t.new_tokens, t.new_tokens)
                              for t in shapes if t.new_tokens)


GENERATION_MODES = ("auto", "cached", "remerge")


def generation_mode(setting: str, cached_fits) -> str:
    """The generation mode of a PS pass with generate tasks: `cached` (every layer merged once
    per device call, reused by every decode step) when `compute.generation` says so, or under
    `auto` when at least one candidate per device fits with its merged layers kept
    (`cached_fits()`); else `remerge` (each layer re-merged at every decode step)."""
    if setting not in GENERATION_MODES:
        raise ValueError(f"generation mode {setting!r}: one of {', '.join(GENERATION_MODES)}")
    if setting != "auto":
        return setting
    return "cached" if cached_fits() else "remerge"


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
