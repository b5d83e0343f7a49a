"""Every registered merge method against a float64 numpy reference and against mergekit 0.1.5.

Parametrised over the registry (`METHODS`): a new entry fails `test_every_method_has_a_case` until
it gets a case here, and is then tested by everything below. mergekit is a black-box oracle through
its public per-tensor API `mergekit.merge_methods.merge_tensors`. Random methods run at density 1,
where they are deterministic; their statistics are tested in test_merge_sparsify.py.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from evomerge_jax.errors import MergeError
from evomerge_jax.merge import METHOD_NAMES, METHODS, magnitude_table, merge_tensor
from merge_reference import REFERENCES

TOL = dict(rtol=1e-5, atol=1e-5)
SHAPES = ((12, 20), (20,))  # [out, in] and a 1-D (norm-like) tensor
W3 = [0.3, -0.5, 0.9]

# method -> cases; a case: k (non-base sources), params, options, and where the base goes:
# "separate" (the method's base argument), "stacked" (first source, for base "none"), or "absent".
CASES = {
    "linear": [dict(k=3, base="stacked", params=dict(weight=[0.2, 0.5, 0.9, 0.4])),
               dict(k=2, base="stacked", params=dict(weight=[1.0, 2.0, -0.5], normalize=False))],
    "slerp": [dict(k=1, params=dict(t=0.35))],
    "nuslerp": [dict(k=2, params=dict(weight=[0.3, 0.8])),
                dict(k=2, base="absent", params=dict(weight=[0.3, 0.8])),
                dict(k=2, params=dict(weight=[0.7, 0.2]), options=dict(nuslerp_flatten=False)),
                dict(k=2, params=dict(weight=[0.7, 0.2]),
                     options=dict(nuslerp_flatten=False, nuslerp_row_wise=True))],
    "multislerp": [dict(k=3, params=dict(weight=[0.3, 0.5, 0.9])),
                   dict(k=3, base="absent", params=dict(weight=[1.0, 2.0, 3.0], normalize_weights=False))],
    "karcher": [dict(k=3, base="stacked", params=dict(tol=1e-7), options=dict(max_iter=12))],
    "task_arithmetic": [dict(k=3, params=dict(weight=W3, **{"lambda": 0.8}))],
    "ties": [dict(k=3, params=dict(weight=W3, density=[0.3, 0.45, 0.2])),
             dict(k=3, params=dict(weight=W3, density=0.4, normalize=False, rescale=True))],
    "dare_ties": [dict(k=3, params=dict(weight=W3))],
    "dare_linear": [dict(k=3, params=dict(weight=W3))],
    "breadcrumbs": [dict(k=3, params=dict(weight=W3, density=[0.3, 0.4, 0.45], gamma=[0.05, 0.1, 0.02]))],
    "breadcrumbs_ties": [dict(k=3, params=dict(weight=W3, density=0.35, gamma=0.1, rescale=True))],
    "della": [dict(k=3, params=dict(weight=W3))],
    "della_linear": [dict(k=3, params=dict(weight=W3))],
    "model_stock": [dict(k=3), dict(k=3, options=dict(filter_wise=True))],
    "sce": [dict(k=3), dict(k=3, params=dict(select_topk=0.4))],
    "nearswap": [dict(k=1, params=dict(t=0.05))],
    "arcee_fusion": [dict(k=1)],
    "ram": [dict(k=3, params=dict(epsilon=1e-3))],
    "ramplus_tl": [dict(k=3, params=dict(r=0.5, alpha=0.6))],
    "passthrough": [dict(k=0, base="stacked", params=dict(scale=0.7))],
}
CASE_IDS = [(m, i, s) for m in METHOD_NAMES for i in range(len(CASES.get(m, []))) for s in SHAPES]


def _inputs(shape, k, seed=0):
    """A base and k sources whose task vectors are sparse (half zeros, so RAM's change sets and
    TIES' zero votes matter) with rows of different scales (so row-wise options matter)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=shape)
    row_scale = np.linspace(0.2, 2.0, shape[0]).reshape((-1,) + (1,) * (len(shape) - 1))
    noise = rng.normal(size=(k,) + shape) * (rng.uniform(size=(k,) + shape) < 0.5) * row_scale
    return base.astype(np.float32), (base + noise).astype(np.float32)


def _case(method, index, shape):
    """-> (base or None, sources [K, ...], params, options) for our API."""
    case = CASES[method][index]
    base, sources = _inputs(shape, case["k"])
    where = case.get("base", "separate")
    if where == "stacked":
        sources, base = np.concatenate([base[None], sources]), None
    elif where == "absent":
        base = None
    return base, sources, case.get("params", {}), case.get("options", {})


_OURS_CACHE = {}


def _ours(method, index, shape):
    """Our merge, jitted over the tensors with the parameters closed over: they stay concrete
    (counted in float64 like mergekit's Python floats), and one compile replaces many eager ops."""
    if (method, index, shape) not in _OURS_CACHE:
        base, sources, params, options = _case(method, index, shape)
        params = {name: np.asarray(value) for name, value in params.items()}
        _OURS_CACHE[method, index, shape] = _merge(method, base, sources, params, **options)
    return _OURS_CACHE[method, index, shape]


def _merge(method, base, sources, params, **options):
    """merge_tensor jitted over the tensors (one compile instead of many eager ops)."""
    key = jax.random.PRNGKey(0)
    merge = jax.jit(lambda b, s: merge_tensor(method, b, s, params, key=key, **options))
    return np.asarray(merge(base, sources))


def test_every_method_has_a_case():
    assert sorted(CASES) == sorted(METHOD_NAMES)
    assert len(METHOD_NAMES) == 20


@pytest.mark.parametrize("method,index,shape", CASE_IDS)
def test_matches_numpy_reference(method, index, shape):
    base, sources, params, options = _case(method, index, shape)
    as64 = lambda x: None if x is None else x.astype(np.float64)  # noqa: E731
    expected = REFERENCES[method](as64(base), as64(sources), params, options)
    np.testing.assert_allclose(_ours(method, index, shape), expected, **TOL)


@pytest.mark.parametrize("method,index,shape", CASE_IDS)
def test_matches_mergekit(method, index, shape):
    torch = pytest.importorskip("torch")
    mergekit_methods = pytest.importorskip("mergekit.merge_methods")
    base, sources, params, options = _case(method, index, shape)
    tensors = ([] if base is None else [base]) + list(sources)
    ids = ([] if base is None else ["base"]) + [f"m{i}" for i in range(len(sources))]
    source_ids = ids[len(ids) - len(sources):]
    # Per-source values as mappings keyed by input id; options are plain mergekit parameters.
    mk_params = {name: dict(zip(source_ids, map(float, value))) if isinstance(value, list) else value
                 for name, value in params.items()}
    expected = mergekit_methods.merge_tensors(
        [torch.from_numpy(t) for t in tensors], method, parameters={**mk_params, **options},
        ids=ids, base_index=None if base is None else 0,
    )
    np.testing.assert_allclose(_ours(method, index, shape), expected.numpy(), **TOL)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_population_vmap_matches_single_calls(method):
    """8 parameter sets (every float parameter scaled by 0.9..1.0) in one jitted vmap equal 8
    single calls; random methods get one key per candidate."""
    base, sources, params, options = _case(method, 0, SHAPES[0])
    factors_p = np.linspace(0.9, 1.0, 8)
    floats = {n: np.asarray(v, np.float32) for n, v in params.items() if not isinstance(v, bool)}
    fixed = {n: v for n, v in params.items() if isinstance(v, bool)}
    population = {n: np.einsum("p,...->p...", factors_p, v).astype(np.float32) for n, v in floats.items()}
    keys_p = jax.random.split(jax.random.PRNGKey(3), 8)

    def one(candidate, key):
        return merge_tensor(method, base, sources, {**candidate, **fixed}, key=key, **options)

    merged_p = jax.jit(jax.vmap(one))(population, keys_p)
    one_jit = jax.jit(one)
    for p in range(8):
        single = one_jit({n: v[p] for n, v in population.items()}, keys_p[p])
        np.testing.assert_allclose(merged_p[p], single, **TOL)


def test_slerp_endpoints_return_the_models():
    base, sources = _inputs((12, 20), 1)
    np.testing.assert_allclose(_merge("slerp", base, sources, {"t": 0.0}), base, atol=1e-6)
    np.testing.assert_allclose(_merge("slerp", base, sources, {"t": 1.0}), sources[0], atol=1e-6)


def test_task_arithmetic_of_one_source_with_weight_one_is_that_source():
    base, sources = _inputs((12, 20), 1)
    np.testing.assert_allclose(_merge("task_arithmetic", base, sources, {"weight": 1.0}),
                               sources[0], atol=1e-6)


def test_density_one_turns_dare_ties_into_ties_without_trimming():
    base, sources = _inputs((12, 20), 3)
    params = {"weight": np.asarray(W3), "density": 1.0, "normalize": True}
    dare = _merge("dare_ties", base, sources, params)
    np.testing.assert_allclose(dare, _merge("ties", base, sources, params), atol=1e-6)


def test_precomputed_magnitude_tables_give_the_same_merge():
    base, sources = _inputs((12, 20), 3)
    params = {"weight": np.asarray(W3), "density": 0.3}
    tables_kn = jax.vmap(magnitude_table)(sources - base[None])
    np.testing.assert_array_equal(_merge("ties", base, sources, params, magnitude_tables_kn=tables_kn),
                                  _merge("ties", base, sources, params))


def test_no_source_returns_the_base():
    base, sources = _inputs((12, 20), 0)
    np.testing.assert_array_equal(merge_tensor("ties", base, sources, {"weight": 1.0}), base)


def test_float64_inputs_merge_in_float64():
    base, sources = _inputs((12, 20), 2)
    with jax.enable_x64(True):
        out = merge_tensor("linear", None, sources.astype(np.float64), {"weight": [1.0, 2.0]})
        assert out.dtype == np.float64


@pytest.mark.parametrize("call,message", [
    (lambda b, s: merge_tensor("tie", b, s, {"weight": 1.0}), "unknown merge method 'tie'"),
    (lambda b, s: merge_tensor("ties", b, s, {}), "parameter 'weight' is required"),
    (lambda b, s: merge_tensor("ties", b, s, {"weight": 1.0, "dense": 0.5}), "no parameter 'dense'"),
    (lambda b, s: merge_tensor("ties", b, s, {"weight": [1.0, 2.0, 3.0]}), "parameter 'weight' has shape"),
    (lambda b, s: merge_tensor("ties", None, s, {"weight": 1.0}), "needs a base model"),
    (lambda b, s: merge_tensor("slerp", b, s, {"t": 0.5}), "exactly 1 non-base model"),
    (lambda b, s: merge_tensor("dare_ties", b, s, {"weight": 1.0}), "pass a jax PRNG key"),
    (lambda b, s: merge_tensor("nuslerp", b, s, {"weight": 1.0, "nuslerp_flatten": False}), "static option"),
])
def test_bad_input_raises_one_line_merge_error(call, message):
    base, sources = _inputs((12, 20), 2)
    with pytest.raises(MergeError, match=message) as info:
        call(base, sources)
    assert "\n" not in str(info.value)


def test_registry_matches_mergekit_declarations():
    """Parameter names and defaults as mergekit declares them (its public method specs)."""
    mergekit_methods = pytest.importorskip("mergekit.merge_methods")
    base_policy = {"required": "required", "optional": "optional", "ignored": "none"}
    for spec in (m.spec for m in mergekit_methods.registered_methods()):
        ours = METHODS[spec.name]
        assert ours.base == base_policy[spec.contract.base.value], spec.name
        declared = {**ours.per_source, **ours.global_params, **ours.options}
        for parameter in spec.parameters:
            assert parameter.name in declared, (spec.name, parameter.name)
            if type(parameter.default) is not object and parameter.default is not None:
                assert declared[parameter.name] == parameter.default, (spec.name, parameter.name)
