"""The hash generator of the merge masks against a numpy oracle of its definition, and the
properties the engine relies on: identical bits under jit and vmap, independent streams."""

import jax
import jax.numpy as jnp
import numpy as np

from evomerge_jax.parallel.prng import reference_bits, wrap


def test_bits_equal_the_numpy_definition():
    key = np.array([12345, 678], np.uint32)
    np.testing.assert_array_equal(np.asarray(jax.random.bits(wrap(key, "hash"), (1000,))),
                                  reference_bits(key, 1000))


def test_same_masks_under_jit_and_vmap():
    keys = jnp.asarray(np.arange(8, dtype=np.uint32).reshape(4, 2))

    def mask(k):
        return jax.random.bernoulli(jax.random.fold_in(wrap(k, "hash"), 3), 0.3, (40, 24))

    looped = np.stack([np.asarray(mask(k)) for k in keys])
    np.testing.assert_array_equal(np.asarray(jax.vmap(mask)(keys)), looped)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(mask))(keys)), looped)


def test_streams_look_independent_and_unbiased():
    key = wrap(np.array([1, 2], np.uint32), "hash")
    a = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 0), 0.3, (200_000,)), float)
    b = np.asarray(jax.random.bernoulli(jax.random.fold_in(key, 1), 0.3, (200_000,)), float)
    assert abs(a.mean() - 0.3) < 0.005 and abs(b.mean() - 0.3) < 0.005
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.01          # sibling keys
    assert abs(np.corrcoef(a[:-1], a[1:])[0, 1]) < 0.01  # neighbouring counters
    split = np.asarray(jax.random.key_data(jax.random.split(key, 1000)))
    assert len({tuple(k) for k in split}) == 1000
    threefry = jax.random.bits(wrap(np.array([1, 2], np.uint32), "threefry"), (4,))
    assert threefry.dtype == jnp.uint32
