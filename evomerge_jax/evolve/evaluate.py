"""Score a population on the tasks: one compiled pass per population chunk, the population axis
sharded over every local device, chunks sized by a memory budget.

The pass is generic over the population model (`PSModel`, `PlainModel`, and DFS's model): it
decodes the genomes on device (`model.candidates`), runs each task's kernel and returns per-row
outputs. `jax.shard_map` gives each device its slice of the candidates and the full (replicated)
weights, so a candidate's arithmetic is the same on one device and on eight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..arch import ModelSpec
from ..fileio import parse_size
from ..generation import greedy_generate
from ..model import hidden_states, unembed
from .metrics import accumulate, finalize, generation_of, run_tasks
from .xla_options import merge_jit

_POP = "pop"


@partial(merge_jit, static_argnames=("model", "generations", "mesh"))
def population_pass(model, generations, mesh, weights, genomes_pd, keys_p2, batch):
    """Every task's outputs for every candidate (see `metrics.run_tasks`); leading axis P."""

    def local(weights, genomes, keys, batch):
        return run_tasks(model, generations, weights, model.candidates(genomes, keys), batch)

    spec = PartitionSpec(_POP)
    return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), spec, spec, PartitionSpec()),
                         out_specs=spec, check_vma=False)(weights, genomes_pd, keys_p2, batch)


@dataclass(frozen=True)
class PlainModel:
    """One ordinary checkpoint as a population model of size 1 (for `evomerge eval` and
    baselines): the plain decoder, no genome."""

    spec: ModelSpec

    def candidates(self, genomes_pd, keys_p2):
        return {}

    def hidden(self, params, cand, tokens_bs, mask_bs):
        return hidden_states(params, self.spec, tokens_bs, mask_bs)[None]

    def head_map(self, params, cand, h_pbsd, fn):
        out = fn(unembed(params, self.spec, h_pbsd[0]))
        return jax.tree.map(lambda x: x[None], out)

    def generate(self, params, cand, tokens_bs, mask_bs, *, max_new_tokens, eos_ids, pad_id):
        return greedy_generate(params, self.spec, tokens_bs, mask_bs,
                               max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id)[None]

    def memory(self, rows, seq, new_tokens=0):
        return 0, 0


def available_memory(device) -> int:
    """Free memory of one device: the allocator's limit on accelerators, half of the host's
    available RAM on CPU (shared by the simulated CPU devices)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    import psutil

    return int(psutil.virtual_memory().available * 0.5)


class Evaluator:
    """Scores genomes on task splits. `split_scores` returns {task: {metric: [P]}}."""

    def __init__(self, model, weights, tasks, tokenizer, *, population: int = 1,
                 memory_budget: str | None = None, chunk_size: int | None = None,
                 global_batch: int | None = None, devices=None, log=print):
        devices = list(devices or jax.local_devices())
        self.mesh = Mesh(np.array(devices), (_POP,))
        self.n_dev = len(devices)
        self.tasks, self.tokenizer, self.log = tuple(tasks), tokenizer, log
        self.weights = jax.device_put(weights, NamedSharding(self.mesh, PartitionSpec()))
        self.resident = sum(x.nbytes for x in jax.tree.leaves(weights))
        if memory_budget is not None:
            total = parse_size(memory_budget)
        else:
            total = available_memory(devices[0]) * (1 if devices[0].platform == "cpu" else self.n_dev)
        self.budget = total - self.resident
        self.seq_len = max((t.seq_len for t in self.tasks if t.cfg.type != "generate"), default=0)
        self.generations = tuple(generation_of(t) for t in self.tasks if t.cfg.type == "generate")
        self.chunk, self.global_batch = self._plan(model, population, chunk_size, global_batch)
        self.model = model

    def _plan(self, model, population, chunk_size, global_batch) -> tuple[int, int]:
        """Candidates per device call (a multiple of the device count, at most the population)
        and the global-tensor batch, from the estimated bytes per candidate of one batch of every
        task; `chunk_size` and `global_batch` override (a resumed run reuses its plan)."""
        teacher = [t for t in self.tasks if t.cfg.type != "generate"]
        rows = sum(_rows(t) for t in teacher)
        per_cand, per_global = model.memory(rows, self.seq_len) if teacher else (0, 0)
        for task in self.tasks:
            if task.cfg.type == "generate":
                new = task.cfg.max_new_tokens
                c, g = model.memory(task.cfg.batch_size, task.seq_len - new, new)
                per_cand, per_global = per_cand + c, max(per_global, g)
        per_cand, per_global = max(per_cand, 1), max(per_global, 1)
        self.per_candidate = per_cand
        per_device = max(self.budget, 0) // self.n_dev
        local = max(1, int(per_device * 0.75 // per_cand))
        if per_device * 0.75 < per_cand and not chunk_size:
            self.log(f"warning: the memory budget beyond the weights "
                     f"({max(self.budget, 0) / 2**20:.0f} MiB) is below one candidate's estimated "
                     f"{per_cand / 2**20:.0f} MiB; scoring one candidate per device at a time")
        local = min(local, -(-population // self.n_dev))
        if chunk_size:
            local = max(1, -(-chunk_size // self.n_dev))
        if global_batch is None:
            global_batch = max(1, min(local, int(per_device * 0.25 // per_global)))
        return local * self.n_dev, global_batch

    def _call(self, genomes, keys, batch):
        """Run the pass over the population in chunks; outputs concatenated on P."""
        n = len(genomes)
        size = min(self.chunk, -(-n // self.n_dev) * self.n_dev)
        shard = NamedSharding(self.mesh, PartitionSpec(_POP))
        batch = jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec()))
        model = self.model
        if hasattr(model, "global_batch"):  # never more than a device's candidates: one program
            model = replace(model, global_batch=min(self.global_batch, size // self.n_dev))
        outs = []
        for start in range(0, n, size):
            g, k = genomes[start:start + size], keys[start:start + size]
            pad = size - len(g)
            if pad:
                g = np.concatenate([g, np.repeat(g[:1], pad, 0)])
                k = np.concatenate([k, np.repeat(k[:1], pad, 0)])
            out = population_pass(model, self.generations, self.mesh, self.weights,
                                  jax.device_put(jnp.asarray(g, jnp.float32), shard),
                                  jax.device_put(jnp.asarray(k, jnp.uint32), shard), batch)
            outs.append(jax.tree.map(lambda x: np.asarray(x)[:size - pad], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    def _assemble(self, split: str, rows_per_task):
        """Host batches per task and the device batch: all teacher-forced rows concatenated
        (padded to one length), then each generate task's prompts."""
        host = [t.batch(split, r) for t, r in zip(self.tasks, rows_per_task)]
        teacher = [b for t, b in zip(self.tasks, host) if t.cfg.type != "generate"]
        device = {"teacher": None, "generate": tuple(
            {k: jnp.asarray(b[k]) for k in ("tokens", "mask")}
            for t, b in zip(self.tasks, host) if t.cfg.type == "generate")}
        if teacher:
            device["teacher"] = {
                k: jnp.asarray(np.concatenate([_pad_cols(b[k], self.seq_len) for b in teacher]))
                for k in ("tokens", "mask", "labels", "scored")}
        return host, device

    def _score(self, genomes, keys, split, rows_per_task, sums):
        host, device = self._assemble(split, rows_per_task)
        teacher, generated = self._call(genomes, keys, device)
        offset, gen_index = 0, 0
        for task, batch in zip(self.tasks, host):
            if task.cfg.type == "generate":
                out = generated[gen_index]
                gen_index += 1
            else:
                lead = batch["tokens"].shape[:-1]
                size = int(np.prod(lead))
                out = tuple(x[:, offset:offset + size].reshape((-1,) + lead) for x in teacher)
                offset += size
            part = accumulate(task, out, batch, self.tokenizer, task.splits[split].answers)
            for name, value in part.items():
                sums[task.name][name] = sums[task.name].get(name, 0) + value

    def _finish(self, sums) -> dict:
        return {t.name: finalize(t.cfg.type, sums[t.name], t.cfg.metric) for t in self.tasks}

    def fitness_scores(self, genomes, keys, rows_per_task) -> dict:
        """Every task on its fitness minibatch, in one compiled pass per population chunk."""
        sums = {t.name: {} for t in self.tasks}
        self._score(genomes, keys, "fitness", rows_per_task, sums)
        return self._finish(sums)

    def split_scores(self, genomes, keys, split: str) -> dict:
        """Every task on the whole of `split`, batch by batch (the same compiled pass)."""
        chunks = [t.eval_chunks(split) for t in self.tasks]
        sums = {t.name: {} for t in self.tasks}
        for i in range(max(map(len, chunks))):
            rows = [c[i] if i < len(c) else np.full(t.cfg.batch_size, -1)
                    for t, c in zip(self.tasks, chunks)]
            self._score(genomes, keys, split, rows, sums)
        return self._finish(sums)


def _rows(task) -> int:
    data = task.splits["fitness"].arrays["tokens"]
    return task.cfg.batch_size * (data.shape[1] if data.ndim == 3 else 1)


def _pad_cols(x: np.ndarray, width: int) -> np.ndarray:
    """[..., S] -> [R, width] rows (choice rows flattened), right-padded with zeros."""
    x = x.reshape((-1, x.shape[-1]))
    return np.pad(x, ((0, 0), (0, width - x.shape[-1])))


def combine(tasks, scores: dict) -> np.ndarray:
    """The weighted sum of the tasks' primary scores [P] (NaN stays NaN)."""
    total = sum(t.cfg.weight * np.asarray(scores[t.name]["score"], np.float64) for t in tasks)
    return np.asarray(total, np.float64)
