"""The DFS path genome: slot layout, decoding against a numpy walk of the path, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evomerge_jax as em
from evomerge_jax import dfs
from evomerge_jax.families import spec_from_config
from tiny_models import make_config


def _spec(**kw):
    return dfs.PathSpec(source_names=("A", "B"), source_layers=(3, 4), **kw)


def _reference_decode(spec, genome):
    """Walk the slots in order with numpy: used where the indicator is > 0 (fixed ends forced),
    scale W[previous used layer, this layer], the entry scale for the first used layer."""
    genome = np.asarray(genome, np.float64)
    used = np.zeros(spec.num_slots, bool)
    used[spec.free_slots] = genome[:len(spec.free_slots)] > 0
    used[spec.fixed_slots] = True
    m, f = spec.num_layers, len(spec.free_slots)
    entry = genome[f + spec.num_scale_genes] if spec.evolve_entry_scale else spec.entry_scale
    layers, scales, prev = [], [], None
    for t in np.flatnonzero(used):
        j = t % m
        if prev is None:
            scales.append(entry)
        elif spec.scale_mode == "matrix":
            scales.append(genome[f:f + m * m].reshape(m, m)[prev, j])
        else:
            h = spec.mlp_hidden
            theta = genome[f:f + 5 * h + 1]
            x = np.array([2 * prev / (m - 1) - 1, 2 * j / (m - 1) - 1,
                          2 * t / (spec.num_slots - 1) - 1])
            hidden = np.tanh(theta[:3 * h].reshape(h, 3) @ x + theta[3 * h:4 * h])
            scales.append(hidden @ theta[4 * h:5 * h] + theta[5 * h])
        layers.append(j)
        prev = j
    return layers, scales


def test_layout_follows_the_paper():
    spec = _spec(repeats=3)
    assert (spec.num_layers, spec.num_slots) == (7, 21)
    assert list(spec.slot_layers[:9]) == [0, 1, 2, 3, 4, 5, 6, 0, 1]
    # start: A's layer 0 in the first repetition; end: A's last layer in the last repetition
    assert (spec.start_slot, spec.end_slot) == (0, 2 * 7 + 2)
    assert list(spec.free_slots) == list(range(1, 16))
    assert spec.num_genes == 15 + 49
    free = _spec(repeats=2, fix_ends=False, evolve_entry_scale=True)
    assert free.window == (0, 14) and len(free.free_slots) == 14 and free.num_genes == 14 + 49 + 1


@pytest.mark.parametrize("fix_ends", [True, False])
def test_initial_genome_decodes_to_model_a(fix_ends):
    spec = _spec(fix_ends=fix_ends)
    path = dfs.decode_path(spec, dfs.initial_genome(spec, sigma=0.1))
    assert path.layers == (0, 1, 2) and path.scales == (1.0, 1.0, 1.0)
    assert path.step_sources() == [("A", 0), ("A", 1), ("A", 2)]
    # 2σ on A's first-repetition layers, except those the fixed start and end supply
    indicators = np.asarray(dfs.initial_genome(spec, sigma=0.1))[:len(spec.free_slots)]
    expected = [0.2, 0.0] if fix_ends else [0.2, 0.2, 0.2]
    np.testing.assert_allclose(indicators[:len(expected)], expected, rtol=1e-6)
    assert not indicators[len(expected):].any()


@pytest.mark.parametrize("mode", ["matrix", "mlp"])
@pytest.mark.parametrize("fix_ends", [True, False])
def test_decode_matches_a_walk_of_the_path(mode, fix_ends):
    spec = _spec(scale_mode=mode, mlp_hidden=5, fix_ends=fix_ends, evolve_entry_scale=True)
    k1, k2 = jax.random.split(jax.random.PRNGKey(3))
    mean = dfs.initial_genome(spec, sigma=0.3, key=k1)
    genomes = mean + 0.7 * jax.random.normal(k2, (6, spec.num_genes))
    paths = dfs.decode_paths(spec, genomes)  # one vmapped decode
    for genome, path in zip(np.asarray(genomes), paths):
        layers, scales = _reference_decode(spec, genome)
        assert list(path.layers) == layers
        np.testing.assert_allclose(path.scales, scales, rtol=1e-5, atol=1e-6)
        assert list(path.slots) == [t for t in path.slots if spec.window[0] <= t < spec.window[1]]
        if fix_ends:
            assert path.slots[0] == spec.start_slot and path.slots[-1] == spec.end_slot
    assert len({p.layers for p in paths}) > 1


def test_genome_for_round_trip():
    spec = _spec()
    w = np.arange(49, dtype=np.float32).reshape(7, 7) / 10 - 2
    genome = dfs.genome_for(spec, [4, 8, 12], w)
    path = dfs.decode_path(spec, genome)
    assert path.slots == (0, 4, 8, 12, 16)
    assert path.layers == (0, 4, 1, 5, 2)
    np.testing.assert_allclose(path.scales, [1.0, w[0, 4], w[4, 1], w[1, 5], w[5, 2]], rtol=1e-6)
    with pytest.raises(em.ConfigError, match=r"outside the usable window \[0, 17\)"):
        dfs.genome_for(spec, [18])


def test_path_json_round_trip():
    spec = _spec()
    path = dfs.decode_path(spec, dfs.genome_for(spec, [3, 9], np.full((7, 7), -0.5)))
    again = dfs.LayerPath.from_json(path.to_json())
    assert again == path
    np.testing.assert_allclose(path.cumulative_scales(), [1.0, -0.5, 0.25, -0.125])
    with pytest.raises(em.ConfigError, match="not a DFS path file"):
        dfs.LayerPath.from_json('{"format": "evomerge-dfs-path/1"}', "x/path.json")


@pytest.mark.parametrize("repeats", [0, -2])
def test_repeats_below_one_is_a_config_error(repeats):
    with pytest.raises(em.ConfigError, match=f"repeats r must be an integer ≥ 1, got {repeats}"):
        _spec(repeats=repeats)


@pytest.mark.parametrize("layers_a", [1, 2])
def test_fixed_ends_that_leave_nothing_to_search(layers_a):
    with pytest.raises(em.ConfigError, match=r"DFS path is empty: the fixed start \(A layer 0"):
        dfs.PathSpec(source_names=("A", "B"), source_layers=(layers_a, 3), repeats=1)


def test_other_bad_specs_and_paths():
    with pytest.raises(em.ConfigError, match="scale_mode 'conv'"):
        _spec(scale_mode="conv")
    with pytest.raises(em.ConfigError, match="needs a random key"):
        dfs.initial_genome(_spec(scale_mode="mlp"), sigma=0.1)
    with pytest.raises(em.ConfigError, match="uses no layer"):
        dfs.LayerPath(("A", "B"), (3, 4), layers=(), scales=())
    with pytest.raises(em.ConfigError, match=r"layer ids \[7\] are outside \[0, 7\)"):
        dfs.LayerPath(("A", "B"), (3, 4), layers=(0, 7), scales=(1, 1))
    # an all-negative genome without fixed ends is an empty path: decodes on device, refused here
    spec = _spec(fix_ends=False)
    with pytest.raises(em.ConfigError, match="uses no layer"):
        dfs.decode_path(spec, -jnp.ones(spec.num_genes))


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", 64, r"hidden_size: a has 32, b has 64"),
    ("vocab_size", 101, r"vocab_size: a has 97, b has 101"),
])
def test_sources_must_share_shapes(field, value, message):
    # the check reads the specs only, so configs suffice (no weights)
    configs = [{**make_config("llama", **kw).to_dict(), "architectures": ["LlamaForCausalLM"]}
               for kw in ({}, {field: value})]
    a, b = (em.Checkpoint(spec=spec_from_config(c), params={}, config=c) for c in configs)
    with pytest.raises(em.ConfigError, match=message) as info:
        dfs.stack_sources([a, b], ["a", "b"])
    assert "\n" not in str(info.value)
