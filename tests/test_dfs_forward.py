"""The DFS population pass against the single-path forward and the exported plain model (JAX),
generation along a path, and the known-path target builder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import evomerge_jax as em
from evomerge_jax import dfs
from evomerge_jax.model import decoder_layer, embed, sliding_flags, unembed
from tiny_models import make_model, save_model


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Two qwen2 models (biases, mixed sliding/full layers); A's embeddings ×30 so that hidden
    states have realistic magnitude (c²·mean(h²) ≫ eps, where the fold is exact)."""
    root = tmp_path_factory.mktemp("dfs_fwd")
    ckpts = []
    for name, seed in (("a", 20), ("b", 21)):
        model = make_model("qwen2_bias_sliding", seed)
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(30.0)
        ckpts.append(em.load(save_model(model, root / name)))
    stack = dfs.stack_sources(ckpts, ["a", "b"])
    return ckpts, stack, dfs.path_spec_for(ckpts, ["a", "b"], repeats=3)


def _batch(vocab):
    rng = np.random.default_rng(5)
    tokens = rng.integers(3, vocab, size=(2, 8))
    mask = np.ones_like(tokens)
    mask[1, :3] = 0  # left padding
    tokens[1, :3] = 0
    return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask, jnp.int32)


def _rel(x, y, mask):
    valid = np.asarray(mask, bool)
    x, y = np.asarray(x)[valid], np.asarray(y)[valid]
    return float(np.abs(x - y).max() / np.abs(y).max())


def _population(spec, key, p):
    """Genomes around the initial mean: scales ±exp(0.3·z) (a fifth negative, magnitudes kept
    near 1 so that c²·mean(h²) ≫ eps and the export is exact), one free slot unused by all."""
    k1, k2, k3 = jax.random.split(key, 3)
    f, d = len(spec.free_slots), spec.num_genes
    mean = dfs.initial_genome(spec, sigma=0.3)
    indicators = mean[:f] + 0.6 * jax.random.normal(k1, (p, f))
    sign = jnp.where(jax.random.bernoulli(k2, 0.2, (p, d - f)), -1.0, 1.0)
    scales = sign * jnp.exp(0.3 * jax.random.normal(k3, (p, d - f)))
    return jnp.concatenate([indicators.at[:, 6].set(-1.0), scales], axis=1)  # slot 7 unused


def test_population_matches_single_path_and_export(sources):
    (a, _), stack, spec = sources
    tokens, mask = _batch(a.spec.vocab_size)
    genomes = _population(spec, jax.random.PRNGKey(0), 3)
    # the hidden-state hook (what task metrics on hidden states call), then A's norm and head
    hidden = dfs.population_hidden(stack.params, stack.spec, spec, genomes, tokens, mask)
    assert hidden.shape == (3, 2, 8, a.spec.hidden_size)
    pop = jax.vmap(lambda h: unembed(stack.params, stack.spec, h))(hidden)
    paths = dfs.decode_paths(spec, genomes)
    assert all(spec.free_slots[6] not in p.slots for p in paths)
    assert any(min(p.scales) < 0 for p in paths)
    assert len({p.layers for p in paths}) == len(paths)
    for p, path in enumerate(paths):
        single = dfs.logits_of_path(stack, path, tokens, mask)
        assert _rel(pop[p], single, mask) < 1e-5
        exported = em.logits(dfs.fold_path(stack, path), tokens, mask)
        assert _rel(pop[p], exported, mask) < 1e-4


def test_population_matches_single_path_with_mlp_scales(sources):
    (a, b), stack, _ = sources
    spec = dfs.path_spec_for([a, b], ["a", "b"], repeats=2, scale_mode="mlp", mlp_hidden=4)
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    mean = dfs.initial_genome(spec, 0.3, key=k1)
    genomes = mean + 0.5 * jax.random.normal(k2, (2, spec.num_genes))
    tokens, mask = _batch(a.spec.vocab_size)
    pop = dfs.population_logits(stack.params, stack.spec, spec, genomes, tokens, mask)
    for p, path in enumerate(dfs.decode_paths(spec, genomes)):
        assert len(set(np.round(path.scales, 6))) > 1
        assert _rel(pop[p], dfs.logits_of_path(stack, path, tokens, mask), mask) < 1e-5


def test_known_path_target_and_initial_genome(sources):
    """The helper for the known-optimum evolution test: a target built as a path over A and B is
    scored exactly by the genome that encodes it, and not by others; the initial genome is A."""
    (a, b), stack, spec = sources
    w = np.ones((6, 6), np.float32)
    w[0, 4], w[4, 1], w[1, 5] = 1.5, -0.8, 0.6
    genome, path, target = dfs.known_path_target(stack, spec, [4, 7, 11], w)
    assert path.layers == (0, 4, 1, 5, 2) and target.spec.num_layers == 5
    np.testing.assert_allclose(path.scales, [1.0, 1.5, -0.8, 0.6, 1.0])
    tokens, mask = _batch(a.spec.vocab_size)
    want = em.logits(target, tokens, mask)
    genomes = jnp.stack([genome, dfs.initial_genome(spec, 0.3),
                         _population(spec, jax.random.PRNGKey(0), 1)[0]])
    pop = dfs.population_logits(stack.params, stack.spec, spec, genomes, tokens, mask)
    assert _rel(pop[0], want, mask) < 1e-4
    assert _rel(pop[1], want, mask) > 1e-2 and _rel(pop[2], want, mask) > 1e-2
    assert _rel(pop[1], em.logits(a, tokens, mask), mask) < 1e-6


def test_generation_along_paths(sources):
    """The population generate (a cache per slot) equals the exported model's generation and the
    single-path generate (a cache per used step)."""
    (a, _), stack, spec = sources
    tokens, mask = _batch(a.spec.vocab_size)
    genomes = _population(spec, jax.random.PRNGKey(2), 2)
    paths = dfs.decode_paths(spec, genomes)
    new = 6
    pop = dfs.population_generate(stack.params, stack.spec, spec, genomes, tokens, mask,
                                  max_new_tokens=new)
    exported = em.generate(dfs.fold_path(stack, paths[0]), tokens, new, attention_mask=mask)
    np.testing.assert_array_equal(np.asarray(pop[0]), exported[:, -new:])
    alone = dfs.path_generate(stack, paths[1], tokens, new, attention_mask=mask)
    np.testing.assert_array_equal(alone[:, -new:], np.asarray(pop[1]))
    assert not np.array_equal(np.asarray(pop[0]), np.asarray(pop[1]))


def _all_candidates_slots(params, spec, slot_layer_n, used_pn, scale_pn, h_pbsd, ctx, caches):
    """The pass before issue 13, the reference: every slot some candidate uses runs for all P
    candidates at once, and a candidate that skips it keeps its old state (jnp.where)."""
    flags_m = sliding_flags(spec)

    def step(h, xs):
        layer, used_p, scale_p, cache = xs
        lp = jax.tree.map(lambda x: x[layer], params["layers"])
        x = h * scale_p[:, None, None, None]
        out, new_cache = jax.vmap(
            lambda x_bsd, c: decoder_layer(lp, spec, x_bsd, ctx, flags_m[layer], c, 0))(x, cache)
        return jnp.where(used_p[:, None, None, None], out, h), new_cache

    return jax.lax.scan(step, h_pbsd, (slot_layer_n, used_pn.T, scale_pn.T, caches))


def test_slots_run_only_for_their_users_as_before(sources):
    """`run_slots` runs each slot for its users only, `chunk` at a time: hidden states and the used
    slots' KV caches equal the all-candidates pass (P = 5, every users' count 0..5 at some slot;
    chunk 2: loops of 0 to 3 steps, padded chunks at odd counts)."""
    (a, _), stack, _ = sources
    tokens, mask = _batch(a.spec.vocab_size)
    p, n = 5, 12
    rng = np.random.default_rng(7)
    used = np.zeros((p, n), bool)
    for k in range(n):  # slot k used by (k mod 6) candidates, a different set each time
        used[rng.permutation(p)[:k % 6], k] = True
    used_pn = jnp.asarray(used)
    scale_pn = jnp.asarray(rng.uniform(0.5, 1.5, (p, n)), jnp.float32)
    layer_n = jnp.asarray(rng.integers(0, stack.spec.num_layers, n), jnp.int32)
    h = jnp.broadcast_to(embed(stack.params, stack.spec, tokens), (p, 2, 8, a.spec.hidden_size))
    h = h * jnp.asarray(rng.uniform(0.5, 1.5, (p, 1, 1, 1)), h.dtype)  # candidates differ
    ctx = dfs.forward.prompt_context(stack.spec, tokens, mask)
    shape = (n, p, 2, 8, a.spec.num_kv_heads, a.spec.head_dim)
    caches = (jnp.zeros(shape), jnp.zeros(shape))
    args = (stack.params, stack.spec, layer_n, used_pn, scale_pn, h, ctx, caches)
    want_h, want_c = jax.jit(_all_candidates_slots, static_argnums=1)(*args)
    got_h, got_c = jax.jit(dfs.run_slots, static_argnums=(1, 9))(*args, 0, 2)
    np.testing.assert_allclose(got_h, want_h, rtol=1e-6, atol=1e-6 * float(jnp.abs(want_h).max()))
    for got, want in zip(got_c, want_c):
        np.testing.assert_allclose(got[used.T], want[used.T], rtol=1e-6, atol=1e-6)
