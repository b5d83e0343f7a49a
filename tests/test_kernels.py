"""The fused population-merge kernels (evomerge_jax.kernels): the Pallas kernel, run interpreted
on CPU, against its pure-jnp reference and against `merge_tensor` per candidate (the merge the
mergekit suite checks), on shapes the tile size does not divide; then an evolve run whose log is
the same with `compute.kernels: pallas` and `jnp`."""

import json

import jax
import numpy as np
import pytest

from evolve_world import ppl_task, write_config
from evomerge_jax.errors import ConfigError, MergeError
from evomerge_jax.kernels import KERNEL_METHODS, choose_backend, kernel_fields, population_merge
from evomerge_jax.merge.methods import merge_tensor
from evomerge_jax.parallel.prng import wrap
from evomerge_jax.searches.run import evolve

P, K = 3, 2
TILE = (8, 16)
RNG = np.random.default_rng(0)
WEIGHT = np.array([[0.5, 0.8], [1.0, -0.3], [0.2, 0.6]], np.float32)
DENSITY = np.array([[0.3, 0.7], [0.5, 0.5], [0.9, 0.2]], np.float32)
KEYS = RNG.integers(0, 2**32, size=(P, 2), dtype=np.uint32)
ULP = 4 * np.finfo(np.float32).eps  # whole-tensor sums (L1 rescale) differ in summation order


def _world(shape):
    base = RNG.normal(size=shape).astype(np.float32)
    sources = base + 0.1 * RNG.normal(size=(K, *shape)).astype(np.float32)
    flat = sources.reshape(K, -1)
    flat[0, :6] = base.reshape(-1)[:6] + 0.05  # ties at the TIES threshold, broken by flat order
    return base, sources


SHAPES = {"matrix": (13, 37), "vector": (29,)}
WORLDS = {name: _world(shape) for name, shape in SHAPES.items()}
CASES = [(m, "matrix") for m in KERNEL_METHODS] + [("della", "vector")]


def _params(method):
    params = {"weight": WEIGHT, "density": DENSITY}
    if method.startswith("della"):
        params["epsilon"] = 0.1
    if method.startswith("breadcrumbs"):
        params["gamma"] = np.float32(0.05)
    return params


@pytest.mark.parametrize("method,shape", CASES)
def test_pallas_equals_reference_and_merge_tensor(method, shape):
    base, sources = WORLDS[shape]

    def both(base, sources, weight, density):  # arguments, not constants XLA would fold
        params = {**_params(method), "weight": weight, "density": density}  # traced, like a genome
        return tuple(population_merge(method, base, sources, params, KEYS, backend=backend,
                                      tile=TILE, interpret=True) for backend in ("pallas", "jnp"))

    # Unoptimised XLA: interpret mode's compile time dominates, and it changes no value here.
    compiled = jax.jit(both).lower(base, sources, WEIGHT, DENSITY).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    pallas, reference = (np.asarray(x) for x in compiled(base, sources, WEIGHT, DENSITY))
    oracle = np.stack([np.asarray(merge_tensor(
        method, base, sources, {**_params(method), "weight": WEIGHT[p], "density": DENSITY[p]},
        wrap(KEYS[p], "hash"))) for p in range(P)])
    assert pallas.shape == (P, *SHAPES[shape])
    scale = np.abs(oracle).max()
    np.testing.assert_allclose(pallas, reference, rtol=0, atol=ULP * scale)
    np.testing.assert_allclose(pallas, oracle, rtol=0, atol=ULP * scale)
    assert not np.allclose(oracle[0], oracle[1])  # the candidates differ: P is really merged


def test_bf16_output_and_the_choice_of_backend():
    base, sources = WORLDS["vector"]
    merge = jax.jit(lambda base, sources, backend, dtype: population_merge(
        "ties", base, sources, _params("ties"), KEYS, backend=backend, tile=TILE, interpret=True,
        out_dtype=dtype), static_argnums=(2, 3))
    out = merge(base, sources, "pallas", "bfloat16")
    expected = merge(base, sources, "jnp", "float32")
    assert out.dtype == np.dtype("bfloat16")
    np.testing.assert_array_equal(np.asarray(out), np.asarray(expected.astype("bfloat16")))
    assert choose_backend("auto", "cpu") == ("jnp", False)
    assert choose_backend("auto", "gpu") == ("pallas", False)
    assert choose_backend("pallas", "cpu") == ("pallas", True)
    assert kernel_fields("jnp", "dare_ties", "threefry") == {"kernels": "jnp", "interpret": False}
    with pytest.raises(ConfigError, match="compute.kernels: pallas.*threefry"):
        kernel_fields("pallas", "dare_ties", "threefry")
    with pytest.raises(MergeError, match="fused merge kernels implement"):
        population_merge("slerp", base, sources[:1], {"t": 0.5}, KEYS)


def _log(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


def _assert_same(a, b, path="log"):
    """Equal structure and values; floats to 1e-5 relative (the merge's whole-tensor L1 sums and
    fused multiply-adds round differently in the last bit, which reaches the nll)."""
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7), path
    else:
        assert a == b, path


def test_evolve_log_is_the_same_with_pallas_and_jnp(evolve_world, tmp_path):
    logs = {}
    for kernels in ("pallas", "jnp"):
        root = tmp_path / kernels
        root.mkdir()
        cfg = write_config(root / "cfg.yml", evolve_world, [ppl_task(evolve_world, weight=1.0)],
                           merge={"method": "dare_ties", "parameters": {"rescale": False}},
                           strategy={"population_size": 4, "generations": 2, "seed": 0},
                           compute={"kernels": kernels})
        evolve(cfg, progress=False, log=lambda *_: None, export=False)
        logs[kernels] = _log(root / "run")
    assert len(logs["jnp"]) == 2
    _assert_same(logs["pallas"], logs["jnp"])
    assert logs["pallas"][0]["fitness"]["best"] != logs["pallas"][0]["fitness"]["mean"]
