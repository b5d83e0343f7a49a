"""Sparsifiers: fast TIES/breadcrumbs thresholds against full sorts, DARE/DELLA statistics, the two
rescale rules, and mergekit 0.1.5 (black box) on the behaviours a single output cannot pin down."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evomerge_jax.errors import MergeError
from evomerge_jax.merge import magnitude_mask, magnitude_table, merge_tensor, outlier_mask, sparsify
from evomerge_jax.merge.sparsify import della_probabilities, keep_count

DENSITIES = [-0.1, 0.0, 1e-4, 0.01, 0.1, 0.25, 0.29, 0.333, 0.45, 0.5, 0.7, 0.9, 0.999, 1.0, 1.2]


def _delta(shape=(37, 53), seed=0):
    """Continuous random values: no two magnitudes tie, so top-k is unique."""
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _count(density, n):
    """docs/merge_semantics.md §2: k = int(d·n); d <= 0 keeps nothing, else k >= 1."""
    return 0 if density <= 0 else min(max(int(density * n), 1), n)


def _topk_mask(delta, k):
    """Full-sort reference: the k largest |δ|."""
    mask = np.zeros(delta.size, bool)
    mask[np.argsort(-np.abs(delta).ravel())[:k]] = True
    return mask.reshape(delta.shape)


@pytest.mark.parametrize("shape", [(37, 53), (101,)])
def test_magnitude_mask_equals_full_sort_topk(shape):
    delta = _delta(shape)
    table = magnitude_table(delta)
    for density in DENSITIES:  # Python floats: the concrete path, int(d·n) in float64
        expected = _topk_mask(delta, _count(density, delta.size))
        np.testing.assert_array_equal(magnitude_mask(delta, density, table), expected)


def test_magnitude_mask_keeps_exactly_k_when_magnitudes_tie():
    """Integer-valued deltas tie everywhere; top-k still keeps exactly int(d*n) elements, all at
    least as large as every dropped one."""
    delta = jnp.asarray(np.random.default_rng(3).integers(-4, 5, size=(30, 17)), jnp.float32)
    for density in (0.05, 0.3, 0.5, 0.77):
        mask = np.asarray(magnitude_mask(delta, density))
        k = int(density * delta.size)
        assert mask.sum() == k
        assert np.abs(delta)[mask].min() >= np.abs(delta)[~mask].max()


def test_magnitude_mask_vmapped_over_16_densities_equals_16_calls():
    delta = _delta()
    table = magnitude_table(delta)
    densities = np.linspace(0.02, 0.98, 16).astype(np.float32)
    masks = jax.jit(jax.vmap(lambda d: magnitude_mask(delta, d, table)))(densities)
    for i, density in enumerate(densities):
        np.testing.assert_array_equal(masks[i], magnitude_mask(delta, density, table))
        # float32 d counted in float32: the reference k is floor(float32 product).
        k = max(int(np.float32(density) * np.float32(delta.size)), 1)
        np.testing.assert_array_equal(masks[i], _topk_mask(delta, k))


def test_outlier_mask_equals_sorted_band():
    delta = _delta()
    table = magnitude_table(delta)
    n = delta.size
    for density in (0.0, 0.1, 0.5, 0.9, 0.97):
        for gamma in (0.0, 0.01, 0.05, 0.2):
            target, top = int(density * n), int(gamma * n)
            bottom = max(0, n - target - top)
            expected = np.zeros(n, bool)
            expected[np.argsort(np.abs(delta).ravel())[bottom:bottom + target]] = True
            got = outlier_mask(delta, density, gamma, table)
            np.testing.assert_array_equal(got, expected.reshape(delta.shape), err_msg=f"{density} {gamma}")


def test_keep_count_uses_the_precision_of_the_density():
    assert int(keep_count(0.29, 100)) == 28  # Python float: int(0.29 * 100) == 28, as mergekit
    assert int(keep_count(np.float32(0.29), 100)) == 29  # float32 product rounds up to 29.0
    assert int(jax.jit(lambda d: keep_count(d, 100))(np.float32(0.29))) == 29  # traced = concrete


@pytest.mark.parametrize("density", [0.1, 0.5, 0.9])
def test_dare_keeps_a_density_fraction(density):
    delta = _delta((200, 100))
    kept = sparsify(delta, density, "random", key=jax.random.PRNGKey(1))
    n = delta.size
    assert abs(int(jnp.sum(kept != 0)) - n * density) < 3 * np.sqrt(n * density * (1 - density))


def test_della_keeps_a_density_fraction_rising_with_row_rank():
    delta = _delta((200, 100))
    density, epsilon = 0.4, 0.2
    kept = np.asarray(sparsify(delta, density, "della_magprune", key=jax.random.PRNGKey(2),
                               epsilon=epsilon)) != 0
    p = np.asarray(della_probabilities(delta, density, epsilon))
    assert abs(kept.sum() - p.sum()) < 3 * np.sqrt((p * (1 - p)).sum())
    assert abs(p.mean() - density) < 1e-6  # ranks are uniform, so E[p] = d
    rank = np.abs(delta).argsort(1).argsort(1) / (delta.shape[1] - 1)
    for band in (rank < 0.1, rank > 0.9):
        assert abs(kept[band].sum() - p[band].sum()) < 3 * np.sqrt((p[band] * (1 - p[band])).sum())


@pytest.mark.parametrize("method", ["magnitude", "random", "magnitude_outliers", "della_magprune"])
def test_l1_rescale_preserves_the_l1_norm_and_density_one_is_exact(method):
    delta = _delta()
    key = jax.random.PRNGKey(4)
    kept = sparsify(delta, 0.3, method, key=key, rescale_on=True, epsilon=0.1)
    np.testing.assert_allclose(jnp.abs(kept).sum(), np.abs(delta).sum(), rtol=1e-5)
    np.testing.assert_array_equal(sparsify(delta, 1.0, method, key=key, rescale_on=True), delta)
    tiny = delta * 1e-12  # ||δ||₁ < 1e-7: the rescale is skipped
    unscaled = sparsify(tiny, 0.3, method, key=key, rescale_on=False, epsilon=0.1)
    rescaled = sparsify(tiny, 0.3, method, key=key, rescale_on=True, epsilon=0.1)
    np.testing.assert_array_equal(rescaled, unscaled)


def test_inverse_density_rescale_is_unbiased():
    delta = _delta((8, 16))
    density = 0.3
    keys = jax.random.split(jax.random.PRNGKey(5), 4000)
    samples = jax.vmap(lambda k: sparsify(delta, density, "random", key=k, rescale_on=True,
                                          rescale_rule="inverse_density"))(keys)
    kept_values = np.asarray(samples)[np.asarray(samples) != 0]
    np.testing.assert_allclose(np.sort(np.unique(np.abs(kept_values))),
                               np.sort(np.abs(delta).ravel()) / np.float32(density), rtol=1e-6)
    stderr = np.abs(delta) * np.sqrt((1 - density) / density / len(keys))
    assert np.all(np.abs(np.asarray(samples).mean(0) - delta) < 5 * stderr + 1e-6)


def test_della_rejects_epsilon_outside_the_unit_interval_like_mergekit():
    base, source = np.zeros((4, 8), np.float32), _delta((1, 4, 8))
    key = jax.random.PRNGKey(0)
    with pytest.raises(MergeError, match="density ± epsilon"):
        merge_tensor("della", base, source, {"weight": 1.0, "density": 0.5, "epsilon": 0.5}, key=key)
    zeros = merge_tensor("della", base, source, {"weight": 1.0, "density": 0.0, "epsilon": 0.5}, key=key)
    np.testing.assert_array_equal(zeros, base)  # d <= 0 prunes everything, no error (as mergekit)


def test_mergekit_rescales_by_the_l1_rule_and_ranks_della_within_rows():
    """Random outputs cannot be compared element-wise: compare the properties that pin the rule.
    On δ = u·row_scale·col_scale, per-row ranking makes the keep rate follow the column only."""
    torch = pytest.importorskip("torch")
    merge_tensors = pytest.importorskip("mergekit.merge_methods").merge_tensors
    rng = np.random.default_rng(6)
    rows, cols = 10 ** np.linspace(-2, 2, 32), 10 ** np.linspace(-2, 2, 48)
    delta = (rng.uniform(0.5, 1.5, (32, 48)) * rows[:, None] * cols[None, :]).astype(np.float32)
    base = np.zeros_like(delta)
    params = {"weight": 1.0, "density": 0.5, "epsilon": 0.45}
    theirs, ours = [], []
    for seed in range(12):
        torch.manual_seed(seed)
        inputs = [torch.from_numpy(base), torch.from_numpy(delta)]
        theirs.append(merge_tensors(inputs, "della_linear", parameters=params, base_index=0).numpy())
        ours.append(np.asarray(merge_tensor("della_linear", base, delta[None], params,
                                            key=jax.random.PRNGKey(seed))))
    for outs in (theirs, ours):
        outs = np.stack(outs)
        np.testing.assert_allclose(np.abs(outs).sum((1, 2)), np.abs(delta).sum(), rtol=1e-5)
        keep = (outs != 0).mean(0)
        assert keep[:, :6].mean() < 0.2 and keep[:, -6:].mean() > 0.8  # follows the column rank
        assert abs(keep[:6].mean() - keep[-6:].mean()) < 0.1  # not the row's scale
