"""Execute a `MergePlan` tensor by tensor into a Hugging Face model dir.

For each output tensor only its inputs are read (`TensorReader`), rounded to its working dtype,
merged by `merge_tensor` in float32, rounded to the working dtype again and cast to the output
dtype, then streamed into the safetensors shards. As in mergekit 0.1.5 (checked against its
outputs): the working dtype is the config's `dtype`, else the tensor's input dtypes promoted as
torch promotes them (bfloat16 + float32 -> float32, bfloat16 + float16 -> float32); the output
dtype is `out_dtype`, else the working dtype. The dir is built beside OUT_DIR and renamed into place (`atomic_dir`),
so an error leaves nothing behind and an existing dir untouched.

Random methods draw from `fold_in(key(seed), stable hash of the output tensor name)`: a run is
reproducible, and a tensor's draw does not depend on which other tensors the plan holds.
"""

from __future__ import annotations

import functools
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import jax.numpy as jnp
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from evomerge_jax.checkpoint import DTYPES, TensorReader, output_config, write_hf_dir
from evomerge_jax.fileio import DEFAULT_SHARD_SIZE, parse_size
from evomerge_jax.merge import layout
from evomerge_jax.merge.methods import merge_tensor
from evomerge_jax.merge.plan import MergePlan, TensorOp
from evomerge_jax.merge.sparsify import keep_count
from evomerge_jax.merge.task_arithmetic import PRESETS
from evomerge_jax.parallel.seeds import merge_tensor_key
from evomerge_jax.parallel.xla_options import merge_jit
from evomerge_jax.vlm.checkpoint import open_reader
from evomerge_jax.vlm.export import write_vlm_streaming

# Tensors this large merge as one compiled program (fused: ~2x faster than op by op on CPU, and
# worth a compilation even when used once). Smaller ones do too when other tensors of the plan
# share their parameters (every layer of a uniform recipe: one compilation per shape serves them
# all, 1.8x faster than op by op on the 134M TIES benchmark); a tensor with parameters of its own
# (a per-layer gradient) runs op by op, where each operation's compilation is shared by every
# tensor of that shape.
_JIT_MIN_ELEMENTS = 1 << 23


@contextmanager
def _progress(total: int, quiet: bool) -> Iterator:
    """A rich progress bar over tensors on stderr, off when quiet or not a terminal."""
    console = Console(stderr=True)
    with Progress(TextColumn("merging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}"), console=console,
                  disable=quiet or not console.is_terminal, transient=True) as bar:
        task = bar.add_task("", total=total)
        yield lambda name: bar.update(task, advance=1, description=name)


def promoted_dtype(dtypes) -> str:
    """torch's promotion over floating dtypes: one dtype stays; float64 wins; any other mix
    (bfloat16 with float16 or float32, float16 with float32) is float32."""
    kinds = set(dtypes)
    if len(kinds) == 1:
        return kinds.pop()
    return "float64" if "float64" in kinds else "float32"


def _working_dtype(plan: MergePlan, readers: dict[Path, TensorReader], refs) -> str:
    if plan.read_dtype:
        return plan.read_dtype
    return promoted_dtype(readers[ref.model].dtype(ref.tensor) for ref in refs)


def _read(readers: dict[Path, TensorReader], working: str, ref) -> np.ndarray:
    cast = None if working == "float64" else DTYPES[working]
    return readers[ref.model].read(ref.tensor, cast)


def _table_positions(method: str, params: dict, num_sources: int, n: int) -> list[int]:
    """The positions of the descending |δ| table that the method's trim reads (sparsify.py):
    the k-th largest for TIES, the band's two ends for breadcrumbs."""
    def per_source(name, default):
        return np.broadcast_to(np.asarray(params.get(name, default)), (num_sources,))
    positions = []
    for density, gamma in zip(per_source("density", 1.0), per_source("gamma", 0.01)):
        target = int(keep_count(density, n))
        if PRESETS[method].sparsifier == "magnitude":
            positions.append(max(target, 1) - 1)
            continue
        bottom = max(0, n - target - int(keep_count(gamma, n)))
        positions += [n - bottom - target, n - 1 - bottom]
    return sorted({min(max(i, 0), n - 1) for i in positions})


def _magnitude_tables(method: str, params: dict, base: np.ndarray | None,
                      sources_k: np.ndarray) -> dict:
    """The descending |X_k − B| tables that TIES-style trimming thresholds against, exact at the
    positions the trim reads: a numpy partition around those positions, not a full sort (XLA's
    CPU sort is ~20x slower than numpy's on large tensors, and a partition is linear time)."""
    preset = PRESETS.get(method)
    if preset is None or not preset.uses_tables or base is None:
        return {}
    table_kn = (sources_k - base[None]).reshape(len(sources_k), -1)
    np.negative(np.abs(table_kn, out=table_kn), out=table_kn)
    kth = _table_positions(method, params, len(sources_k), table_kn.shape[1])
    table_kn.partition(kth, axis=1)  # ascending -|δ| is descending |δ| at every kth position
    return {"magnitude_tables_kn": np.negative(table_kn, out=table_kn)}


@functools.lru_cache(maxsize=32)
def _compiled(method: str, params: tuple, options: tuple):
    """`merge_tensor` as one XLA program; parameters stay Python constants (concrete), so counts
    such as int(d·n) are exactly those of the op-by-op path. Compiled with the XLA:CPU options
    that keep the sum over the stacked sources fast (see xla_options)."""
    def merge(base, sources_k, key, extra):
        return merge_tensor(method, base, sources_k, dict(params), key, **dict(options), **extra)
    return merge_jit(merge)


def _to_device(arrays: dict) -> dict:
    """numpy -> jax one array at a time, freeing each numpy copy as soon as it is transferred."""
    return {name: jnp.asarray(arrays.pop(name)) for name in list(arrays)}


def _program_key(op: TensorOp) -> tuple:
    return tuple(sorted(op.params.items())), tuple(sorted(op.options.items()))


def shared_programs(plan: MergePlan) -> set:
    """The parameter sets that more than one tensor of the plan merges with."""
    counts = Counter(_program_key(op) for op in plan.ops)
    return {key for key, n in counts.items() if n > 1}


def merge_op(plan: MergePlan, op: TensorOp, seed: int, shared: bool = False) -> np.ndarray:
    """One output tensor, in the plan's output dtype. Holds the K + 1 inputs of this tensor only:
    the model files are opened for this tensor and closed after it, so that their mapped pages
    do not pile up in memory over the run."""
    refs = ([op.base] if op.base else []) + list(op.sources)
    readers = {ref.model: open_reader(ref.model, need_spec=False) for ref in refs}
    working = _working_dtype(plan, readers, refs)
    base = None if op.base is None else np.asarray(_read(readers, working, op.base), np.float32)
    shape = readers[refs[0].model].shape(refs[0].tensor)
    sources_k = np.empty((len(op.sources),) + shape, np.float32)
    for k, ref in enumerate(op.sources):
        sources_k[k] = _read(readers, working, ref)
    del readers
    key = merge_tensor_key(seed, op.name) if plan.method.random else None
    tables = _magnitude_tables(plan.method.name, op.params, base, sources_k)
    if shared or np.prod(shape) >= _JIT_MIN_ELEMENTS:
        arrays = {"sources_k": sources_k, **tables, **({} if base is None else {"base": base})}
        del base, sources_k, tables
        inputs = _to_device(arrays)
        merge = _compiled(plan.method.name, *_program_key(op))
        merged = merge(inputs.pop("base", None), inputs.pop("sources_k"), key, inputs)
    else:
        merged = merge_tensor(plan.method.name, base, sources_k, op.params, key, **op.options,
                              **tables)
    rounded = np.asarray(merged).astype(jnp.dtype(working), copy=False)
    return rounded.astype(jnp.dtype(plan.out_dtype or working), copy=False)


def run_plan(plan: MergePlan, out_dir: str | Path, *, seed: int = 0,
             shard_size: int | str = DEFAULT_SHARD_SIZE, overwrite: bool = False,
             quiet: bool = False) -> Path:
    """Write the merged model to `out_dir`: shards, config.json, tokenizer files, and the config
    it ran as mergekit_config.yml (as mergekit does)."""
    parse_size(shard_size)  # a bad size fails before any tensor is merged
    written = []  # dtypes, for config.json when neither dtype nor out_dtype is set

    def config() -> dict:  # after the tensors: it may need the dtype they were written in
        dtype = plan.out_dtype or plan.read_dtype or written[0]
        if plan.spec is None:  # a family merged by tensor names alone (merge/layout.py)
            return layout.output_config(plan.hf_config, plan.num_layers, plan.layer_types, dtype)
        return output_config(dict(plan.hf_config), plan.spec, jnp.dtype(dtype))

    with _progress(len(plan.ops), quiet) as advance:
        def tensors():
            shared = shared_programs(plan)
            for op in plan.ops:
                merged = merge_op(plan, op, seed, _program_key(op) in shared)
                written.append(merged.dtype.name)
                yield op.name, merged
                advance(op.name)

        if plan.vision_dir is not None:  # the merged language tower in the LLaVA's place
            return write_vlm_streaming(plan.vision_dir, tensors(), config, out_dir,
                                       overwrite=overwrite, shard_size=shard_size,
                                       extra_files={"mergekit_config.yml": plan.text})
        return write_hf_dir(out_dir, tensors(), config, tokenizer_from=plan.tokenizer_dir,
                            overwrite=overwrite, shard_size=shard_size,
                            extra_files={"mergekit_config.yml": plan.text})
