"""The device mesh of the population pass and where the weights lie on it (docs/design.md §5).

Two axes. `pop` splits the population: each row of the mesh scores its own share of the
candidates. `model` splits the weight tensors the way tensor parallelism does (Megatron-LM,
Shoeybi et al. 2019): q/k/v projections by output heads, o_proj by input heads, gate/up by
intermediate units (their output rows in the HF [out, in] layout), down by intermediate units
(its input columns), the embedding and LM head by vocabulary rows. Vocabulary rows rather than
hidden columns because the head then yields logits split by vocabulary (the largest activation of
the pass, [B, S, V]) and the embedding lookup a masked gather, where hidden columns would need an
all-reduce of whole [B, S, V] partial logits; when the model axis does not divide the vocabulary,
the hidden columns are split instead. A tensor dimension the axis does not divide (4 heads on 8
devices, a prime vocabulary) stays replicated, as do norms and biases of the residual stream.

The pass is manual over `pop` only (`jax.shard_map(..., axis_names={"pop"})`): XLA's partitioner
handles `model` from the weights' shardings, so the maths of a candidate is the same on every
mesh, up to the order of float sums across the model axis.

Shape letters: L layers (M for a DFS stack), K sources, N a magnitude table's entries.
"""

from __future__ import annotations

import itertools
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ..arch import LAYER_TENSORS, ModelSpec
from ..errors import ConfigError

POP, MODEL = "pop", "model"
_FIT = 0.5  # auto mesh: the weights may take half of a device's free memory, the pass the rest

_VOCAB = ("embed", "lm_head")


def split_axis(spec: ModelSpec, name: str, model: int) -> int | None:
    """The own axis of tensor `name` split over a model axis of size `model` (None: replicated)."""
    if model == 1:
        return None
    if name in _VOCAB:
        if spec.vocab_size % model == 0:
            return 0
        return 1 if spec.hidden_size % model == 0 else None
    info = LAYER_TENSORS.get(name)
    if info is None or info.split is None:
        return None
    axis, count = info.split  # arch.py's per-tensor table
    return axis if getattr(spec, count) % model == 0 else None


def _leaf_spec(spec: ModelSpec, model: int, path, shape) -> PartitionSpec:
    """A weight leaf's PartitionSpec from its pytree path: the last key is the tensor's short
    name, leading axes (layers, sources) are never split; a magnitude table [..., N] is split on
    N when its tensor is split and the axis divides N."""
    keys = [getattr(k, "key", None) for k in path]
    name, ndim = keys[-1], len(shape)
    axis = split_axis(spec, name, model)
    if axis is None:
        return PartitionSpec()
    if "tables" in keys:
        return PartitionSpec(*([None] * (ndim - 1)), MODEL) if shape[-1] % model == 0 else (
            PartitionSpec())
    own = len(spec.layer_shape(name) if "layers" in keys else spec.global_shape(name))
    return PartitionSpec(*([None] * (ndim - own + axis)), MODEL)


def weight_specs(spec: ModelSpec, weights, model: int):
    """PartitionSpecs of a weights pytree (PS {"base", "sources", "tables"} or a plain / DFS-stack
    params dict); `weights` may hold arrays or ShapeDtypeStructs."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _leaf_spec(spec, model, path, x.shape), weights)


def device_bytes(spec: ModelSpec, weights, model: int) -> int:
    """Bytes of the weights held by one device of a model axis of size `model`."""
    specs = jax.tree.leaves(weight_specs(spec, weights, model),
                            is_leaf=lambda x: isinstance(x, PartitionSpec))
    total = 0
    for x, s in zip(jax.tree.leaves(weights), specs):
        total += int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize // (model if MODEL in s else 1)
    return total


def mesh_sizes(setting, n_devices: int, bytes_at: Callable[[int], int], free: int,
               log=print) -> tuple[int, int]:
    """(pop, model) from `compute.mesh`. `auto`: every device on `pop` when the weights fit in
    half of one device's free memory, else the smallest model axis (a divisor of the device
    count) whose per-device share `bytes_at(model)` fits; explicit sizes must use every device."""
    if setting == "auto":
        sizes = [m for m in range(1, n_devices + 1) if n_devices % m == 0]
        for m in sizes:
            if bytes_at(m) <= _FIT * free:
                return n_devices // m, m
        log(f"warning: the weights ({bytes_at(n_devices) / 2**20:.0f} MiB per device even split "
            f"over all {n_devices} devices) exceed half a device's free memory "
            f"({free / 2**20:.0f} MiB); trying anyway")
        return 1, n_devices
    model = setting.model
    pop = setting.pop or n_devices // model
    if pop * model != n_devices:
        raise ConfigError(f"compute.mesh: pop {pop} x model {model} = {pop * model} devices, but "
                          f"{n_devices} are visible; choose sizes whose product is {n_devices} "
                          "(or mesh: auto)")
    return pop, model


def make_mesh(devices, pop: int, model: int) -> Mesh:
    """Consecutive devices share a model row, so that (with devices in process order) a model
    axis no wider than one host stays inside the host."""
    return Mesh(np.asarray(devices).reshape(pop, model), (POP, MODEL))


def first_device_mesh() -> Mesh:
    """A 1 x 1 mesh on this process's first device: where a search loads its weights when no
    mesh is given, and where an export reads a stack that spans several hosts."""
    return make_mesh(jax.local_devices()[:1], 1, 1)


def weight_shardings(mesh: Mesh, spec: ModelSpec, weights):
    return jax.tree.map(lambda s: NamedSharding(mesh, s),
                        weight_specs(spec, weights, mesh.shape[MODEL]),
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def put_global(x, sharding) -> jax.Array:
    """A host array that every process holds identically, as a global array: each process
    places only the shards of its own devices."""
    x = np.asarray(x)
    x = x.astype(jax.dtypes.canonicalize_dtype(x.dtype))  # int64 -> int32 unless x64 is on
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def read_global(shape, dtype, sharding, stacked: int, read_one) -> jax.Array:
    """A global array read shard by shard: `read_one(ids, own_index)` returns the block
    `own_index` (a tuple of slices) of the tensor at stacked position `ids` (one int per leading
    axis, e.g. (layer, source)). Each process reads only the blocks its devices hold, each once."""
    cache: dict = {}

    def block(index):
        ranges = [range(n)[s] for n, s in zip(shape[:stacked], index[:stacked])]
        own = tuple(index[stacked:])
        parts = [np.asarray(read_one(ids, own), dtype) for ids in itertools.product(*ranges)]
        lead = tuple(len(r) for r in ranges)
        return np.stack(parts).reshape(lead + parts[0].shape) if stacked else parts[0]

    def callback(index):
        key = tuple((s.start, s.stop, s.step) for s in index)
        if key not in cache:
            cache[key] = block(index)
        return cache[key]

    return jax.make_array_from_callback(tuple(shape), sharding, callback)
