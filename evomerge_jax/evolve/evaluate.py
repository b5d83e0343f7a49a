"""Score a population on the tasks: one compiled pass per population chunk over a (pop, model)
device mesh (see mesh.py), chunks sized by a memory budget.

The pass is generic over the population model (`PSModel`, `PlainModel`, and DFS's model): it
decodes the genomes on device (`model.candidates`), runs each task's kernel and returns per-row
outputs. `jax.shard_map`, manual over `pop` only, gives each row of the mesh its slice of the
candidates; the weights are split over `model` as they were placed and XLA partitions that axis,
so a candidate's arithmetic is the same on one device, on eight, and on several hosts. The
outputs are gathered onto every device (they are small), so that every process reads them whole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import jax
import numpy as np
import psutil
from jax.sharding import NamedSharding, PartitionSpec

from ..arch import ModelSpec
from ..fileio import parse_size
from ..generation import greedy_generate
from ..model import embed, hidden_states, hidden_states_from_embeds, unembed
from ..parallel.memory_model import (choose_chunk, generation_mode, pass_bytes, shape_of,
                                     workloads)
from ..parallel.mesh import MODEL, POP, make_mesh, put_global, weight_shardings
from ..parallel.xla_options import merge_jit
from ..vision_splice import with_image
from .metrics import generation_of, run_tasks
from .task_types import TASK_TYPES


@partial(merge_jit, static_argnames=("model", "generations", "mesh"))
def population_pass(model, generations, mesh, weights, genomes_pd, keys_p2, batch):
    """Every task's outputs for every candidate (see `metrics.run_tasks`); leading axis P,
    replicated on every device."""

    def local(weights, genomes, keys, batch):
        return run_tasks(model, generations, weights, model.candidates(genomes, keys), batch)

    rows, whole = PartitionSpec(POP), PartitionSpec()
    # Unsplit weights: manual over the whole mesh, so XLA's partitioner has nothing to do.
    manual = {POP} if mesh.shape[MODEL] > 1 else set(mesh.axis_names)
    out = jax.shard_map(local, mesh=mesh, in_specs=(whole, rows, rows, whole), out_specs=rows,
                        axis_names=manual, check_vma=False)(weights, genomes_pd, keys_p2, batch)
    return jax.lax.with_sharding_constraint(out, NamedSharding(mesh, whole))


@dataclass(frozen=True)
class PlainModel:
    """One ordinary checkpoint as a population model of size 1 (for `evomerge eval` and
    baselines): the plain decoder, no genome."""

    spec: ModelSpec

    def candidates(self, genomes_pd, keys_p2):
        return {}

    def hidden(self, params, cand, tokens_bs, mask_bs, image=None):
        if image is None:
            return hidden_states(params, self.spec, tokens_bs, mask_bs)[None]
        h = with_image(embed(params, self.spec, tokens_bs), image)
        return hidden_states_from_embeds(params, self.spec, h, mask_bs)[None]

    def head_map(self, params, cand, h_pbsd, fn):
        out = fn(unembed(params, self.spec, h_pbsd[0]))
        return jax.tree.map(lambda x: x[None], out)

    def generate(self, params, cand, tokens_bs, mask_bs, *, max_new_tokens, eos_ids, pad_id,
                 image=None):
        embeds, mask = image if image is not None else (None, None)
        return greedy_generate(params, self.spec, tokens_bs, mask_bs,
                               max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                               image_embeds=embeds, image_mask=mask)[None]

    def memory(self, rows, seq, new_tokens=0, model_axis=1):
        return 0, 0

    def fixed_memory(self, model_axis=1, work=()):
        return 0


def available_memory(device) -> int:
    """Free memory of one device: the allocator's limit on accelerators, half of the host's
    available RAM on CPU (shared by the simulated CPU devices)."""
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    return int(psutil.virtual_memory().available * 0.5)


class Evaluator:
    """Scores genomes on task splits. `split_scores` returns {task: {metric: [P]}}."""

    def __init__(self, model, weights, tasks, tokenizer, *, population: int = 1,
                 memory_budget: str | None = None, chunk_size: int | None = None,
                 global_batch: int | None = None, devices=None, mesh=None, log=print,
                 generation: str = "auto", vision=None):
        """`mesh` (pop, model) defaults to every local device (or `devices`) on `pop`; the
        weights are placed on it as mesh.py splits them (a no-op for weights loaded there).
        `generation` (`compute.generation`): how a merging model runs generate tasks, `cached`
        or `remerge`, `auto` choosing by the memory model (`self.generation` holds the choice;
        None when nothing generates or the model does not merge). `vision` (evolve/vision.py):
        a VLM's frozen vision side, which turns each batch's images into embeddings once, for
        every candidate."""
        if mesh is None:
            devices = list(devices or jax.local_devices())
            mesh = make_mesh(devices, len(devices), 1)
        self.mesh = mesh
        self.n_dev = mesh.shape[POP]  # candidates are split over the pop axis only
        self.tasks, self.tokenizer, self.log = tuple(tasks), tokenizer, log
        self.vision = vision if vision is not None and any(map(_has_images, self.tasks)) else None
        self.weights = jax.device_put(weights, weight_shardings(mesh, model.spec, weights))
        leaves = jax.tree.leaves(self.weights)
        self.resident = sum(x.nbytes for x in leaves)
        self.resident_per_device = sum(
            int(np.prod(x.sharding.shard_shape(x.shape))) * x.dtype.itemsize for x in leaves)
        # This process's first device: only its own devices report their memory.
        device = next(d for d in mesh.devices.flat if d.process_index == jax.process_index())
        n_all = mesh.devices.size
        if memory_budget is not None:
            total = parse_size(memory_budget)
        else:
            total = available_memory(device) * (1 if device.platform == "cpu" else n_all)
        # Every device holds its share of one copy of the weights (model axis) per pop row.
        self.budget = total - self.resident_per_device * n_all
        self.seq_len = max((t.seq_len for t in self.tasks if not t.generates), default=0)
        self.generations = tuple(generation_of(t) for t in self.tasks if t.generates)
        self.generation = None
        if self.generations and hasattr(model, "generation"):
            cached = replace(model, generation="cached")
            self.generation = generation_mode(generation, lambda: self._plan(
                cached, population, chunk_size, global_batch)[2])
            model = replace(model, generation=self.generation)
        self.chunk, self.global_batch, fits = self._plan(model, population, chunk_size,
                                                         global_batch)
        if not fits and not chunk_size:
            need = max(self.per_candidate, self.per_global) / 2**20
            free = self.free / 2**20
            self.log(f"warning: a device's memory budget beyond the weights ({free:.0f} MiB) "
                     f"is below one candidate's estimated {need:.0f} MiB (see `evomerge "
                     "plan`); scoring one candidate per device at a time")
        self.model = model

    def _plan(self, model, population, chunk_size, global_batch) -> tuple[int, int, bool]:
        """Candidates per device call (a multiple of the device count, at most the population),
        the global-tensor batch and whether they fit, from the estimated bytes per candidate of
        one batch of every task; `chunk_size` and `global_batch` override (a resumed run reuses
        its plan)."""
        axis = self.mesh.shape.get(MODEL, 1)
        work = workloads(shape_of(t) for t in self.tasks)
        scan, glob = pass_bytes(partial(model.memory, model_axis=axis), work)
        per_cand, per_global = max(int(scan), 1), max(int(glob), 1)
        self.per_candidate, self.per_global = per_cand, per_global
        fixed = model.fixed_memory(axis, work)
        self.free = free = max(self.budget, 0) // self.mesh.devices.size - fixed
        local, global_batch, fits = choose_chunk(free, per_cand, per_global, population,
                                                 self.n_dev, chunk_size, global_batch)
        return local * self.n_dev, global_batch, fits

    def use_generation(self, mode: str):
        """Run generate tasks in `mode` (`cached` or `remerge`) from now on (a multi-process run
        takes process 0's choice)."""
        self.generation = mode
        self.model = replace(self.model, generation=mode)

    def _call(self, genomes, keys, batch):
        """Run the pass over the population in chunks; outputs concatenated on P."""
        n = len(genomes)
        size = min(self.chunk, -(-n // self.n_dev) * self.n_dev)
        shard = NamedSharding(self.mesh, PartitionSpec(POP))
        whole = NamedSharding(self.mesh, PartitionSpec())
        batch = jax.tree.map(lambda x: put_global(x, whole), batch)
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
                                  put_global(np.asarray(g, np.float32), shard),
                                  put_global(np.asarray(k, np.uint32), shard), batch)
            outs.append(jax.tree.map(lambda x: np.asarray(x)[:size - pad], out))
        return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

    def _assemble(self, split: str, rows_per_task):
        """Host batches per task and the device batch: all teacher-forced rows concatenated
        (padded to one length), then each generate task's prompts."""
        host = [t.batch(split, r) for t, r in zip(self.tasks, rows_per_task)]
        if self.vision is not None:  # image embeddings, once per batch (shared by candidates)
            host = [{**b, **self._images(b)} for b in host]
        image_keys = ("image_embeds", "image_mask") if self.vision is not None else ()
        teacher = [b for t, b in zip(self.tasks, host) if not t.generates]
        device = {"teacher": None, "generate": tuple(
            {k: np.asarray(b[k]) for k in ("tokens", "mask", *image_keys)}
            for t, b in zip(self.tasks, host) if t.generates)}
        if teacher:
            device["teacher"] = {
                k: np.concatenate([_pad_cols(b[k], self.seq_len) for b in teacher])
                for k in ("tokens", "mask", "labels", "scored", *image_keys)}
        return host, device

    def _images(self, batch: dict) -> dict:
        """A task batch's image embeddings and mask, shaped as its tokens (+ D); zeros and False
        for a task or row without an image. A choice task's choices share one prompt: its image
        features are computed once per example."""
        tokens = np.asarray(batch["tokens"])
        dim = self.vision.spec.text.hidden_size
        if "pixel_values" not in batch or not np.any(batch["has_image"]):
            return {"image_embeds": np.zeros(tokens.shape + (dim,), np.float32),
                    "image_mask": np.zeros(tokens.shape, bool)}
        first = tokens[:, 0] if tokens.ndim == 3 else tokens
        embeds, mask = self.vision.embeds(first, batch["pixel_values"], batch["image_sizes"],
                                          batch["has_image"])
        if tokens.ndim == 3:  # [B, C, S]: the prompt positions are the same in every choice
            embeds = np.broadcast_to(embeds[:, None], tokens.shape + (dim,))
            mask = np.broadcast_to(mask[:, None], tokens.shape) & (
                tokens == self.vision.image_token_id)
        return {"image_embeds": embeds, "image_mask": mask}

    def _score(self, genomes, keys, split, rows_per_task, sums, items=None):
        host, device = self._assemble(split, rows_per_task)
        teacher, generated = self._call(genomes, keys, device)
        offset, gen_index = 0, 0
        for task, batch, rows in zip(self.tasks, host, rows_per_task):
            if task.generates:
                out = generated[gen_index]
                gen_index += 1
            else:
                lead = batch["tokens"].shape[:-1]
                size = int(np.prod(lead))
                out = tuple(x[:, offset:offset + size].reshape((-1,) + lead) for x in teacher)
                offset += size
            part = TASK_TYPES[task.cfg.type].accumulate(task, out, batch, self.tokenizer,
                                                        task.splits[split].answers)
            for name, value in part.items():  # arrays of sums, or (lm_eval) of item lists
                prev = sums[task.name].get(name)
                sums[task.name][name] = value if prev is None else prev + value
            if items is not None:  # per-example scores, by example index (padding dropped)
                rows = np.asarray(rows)
                per = TASK_TYPES[task.cfg.type].items(task, out, batch, self.tokenizer,
                                                      task.splits[split].answers)
                items[task.name][:, rows[rows >= 0]] = per[:, rows >= 0]

    def _finish(self, sums) -> dict:
        return {t.name: TASK_TYPES[t.cfg.type].finalize(t, sums[t.name]) for t in self.tasks}

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


    def split_items(self, genomes, keys, split: str) -> tuple[dict, dict]:
        """`split_scores` and, from the same passes, every example's score in [0, 1]
        (task_types' `items`): ({task: {metric: [P]}}, {task: [P, examples]})."""
        chunks = [t.eval_chunks(split) for t in self.tasks]
        sums = {t.name: {} for t in self.tasks}
        items = {t.name: np.full((len(genomes), t.splits[split].size), np.nan)
                 for t in self.tasks}
        for i in range(max(map(len, chunks))):
            rows = [c[i] if i < len(c) else np.full(t.cfg.batch_size, -1)
                    for t, c in zip(self.tasks, chunks)]
            self._score(genomes, keys, split, rows, sums, items)
        return self._finish(sums), items


def _pad_cols(x: np.ndarray, width: int) -> np.ndarray:
    """[..., S] -> [R, width] rows (choice rows flattened), right-padded with zeros; image
    embeddings [..., S, D] -> [R, width, D]."""
    if x.dtype == np.float32 and x.ndim >= 3:  # image embeds
        x = x.reshape((-1,) + x.shape[-2:])
        return np.pad(x, ((0, 0), (0, width - x.shape[1]), (0, 0)))
    x = x.reshape((-1, x.shape[-1]))
    return np.pad(x, ((0, 0), (0, width - x.shape[-1])))


def _has_images(task) -> bool:
    return any("pixel_values" in s.arrays for s in task.splits.values())


def combine(tasks, scores: dict) -> np.ndarray:
    """The weighted sum of the tasks' primary scores [P] (NaN stays NaN)."""
    total = sum(t.cfg.weight * np.asarray(scores[t.name]["score"], np.float64) for t in tasks)
    return np.asarray(total, np.float64)
