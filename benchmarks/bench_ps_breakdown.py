"""Where the PS population pass's time goes: the whole pass (as `bench_population.py` runs it) and
sub-programs built from the same pieces (`PSModel`'s merges, `decoder_layer`, `unembed`, the
task's kernel), each jitted with the pass's XLA options and timed on the same candidates and
batch, interleaved round by round (medians), beside the machine's float32 matmul rate:

  layer merges      the L layers merged for each candidate (`merge_candidate_layer`), reduced
  layer forward     the L decoder layers applied to each candidate with unmerged weights
  layer matmuls     only the projections of those layers (q, k, v, o, gate, up, down)
  embed merge       the embedding merged per candidate and the batch's tokens looked up in it
  head merges       final norm and LM head merged per candidate, reduced
  head              final norm, LM head matmul and the perplexity kernel per candidate

so that attention, norms and the rest of a layer = layer forward − layer matmuls, and the pass's
own overhead = pass − (layer merges + layer forward + embed merge + head merges + head).

    python benchmarks/bench_ps_breakdown.py [--hidden 512 --layers 8 --vocab 32000 --rows 8
                                             --seq 64 --population 16 --rounds 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_population import build_world, evolve_config  # noqa: E402


def programs(model, weights, cand, tokens, mask, labels, scored):
    """name -> a compiled zero-argument callable of one piece of the pass (all P candidates)."""
    import jax
    import jax.numpy as jnp

    from evomerge_jax.evolve.metrics import teacher_stats
    from evomerge_jax.model import (decoder_layer, embed, make_context, positions_from_mask,
                                    unembed)
    from evomerge_jax.parallel.xla_options import merge_jit

    spec, gb, mb = model.spec, model.global_batch, model.merge_batch
    positions = positions_from_mask(mask)
    ctx = make_context(spec, positions, mask, jnp.broadcast_to(jnp.arange(tokens.shape[1]),
                                                               tokens.shape))
    h0 = jnp.zeros((cand["key"].shape[0],) + tokens.shape + (spec.hidden_size,), model.dtype)
    h0 = h0 + jax.random.normal(jax.random.PRNGKey(0), h0.shape, h0.dtype)
    layer_inputs = model._layer_inputs(weights, cand)
    def reduce(tree):
        return sum(jnp.sum(x.astype(jnp.float32)) for x in jax.tree.leaves(tree))

    def layer_merges(weights, cand):
        def step(_, xs):
            layer_w, coefs_l, _flag, layer = xs
            merged = jax.lax.map(lambda a: reduce(model.merge_candidate_layer(layer_w, *a, layer)),
                                 (coefs_l, cand["key"]), batch_size=mb)
            return None, merged
        return jax.lax.scan(step, None, model._layer_inputs(weights, cand))[1]

    def layer_forward(weights, h):
        def step(h, xs):
            lp, is_sliding = xs
            return jax.lax.map(lambda x: decoder_layer(lp, spec, x, ctx, is_sliding)[0], h,
                               batch_size=mb), None
        return jax.lax.scan(step, h, (weights["base"]["layers"], layer_inputs[2]))[0]

    def layer_matmuls(weights, h):
        def step(h, lp):  # the projections of a Llama layer (H·E = D), nothing else
            def one(x):
                q = jnp.einsum("bsi,oi->bso", x, lp["q_proj"])
                k = jnp.einsum("bsi,oi->bso", x, lp["k_proj"])
                v = jnp.einsum("bsi,oi->bso", x, lp["v_proj"])
                o = jnp.einsum("bsi,oi->bso", q, lp["o_proj"])
                g = jnp.einsum("bsi,oi->bso", x, lp["gate_proj"])
                u = jnp.einsum("bsi,oi->bso", x, lp["up_proj"])
                d = jnp.einsum("bsi,oi->bso", g * u, lp["down_proj"])
                return x + o + d + jnp.sum(k) + jnp.sum(v)
            return jax.lax.map(one, h, batch_size=mb), None
        return jax.lax.scan(step, h, weights["base"]["layers"])[0]

    def global_merges(weights, cand):
        def one(a):
            values, key = a
            return sum(reduce(model.merge_global(weights, values, key, n))
                       for n in ("final_norm", "lm_head") if n in weights["base"])
        return jax.lax.map(one, (cand["values"], cand["key"]), batch_size=gb)

    def head(weights, h):
        params = {"final_norm": weights["base"]["final_norm"], "embed": weights["base"]["embed"],
                  "lm_head": weights["base"].get("lm_head")}
        return jax.lax.map(lambda x: teacher_stats(unembed(params, spec, x), labels, scored), h,
                           batch_size=gb)

    def embed_lookup(weights, cand):
        def one(a):
            values, key = a
            table = model.merge_global(weights, values, key, "embed")
            return embed({"embed": table}, spec, tokens)
        return jax.lax.map(one, (cand["values"], cand["key"]), batch_size=gb)

    out = {}
    for name, fn, args in (("layer merges", layer_merges, (weights, cand)),
                           ("layer forward", layer_forward, (weights, h0)),
                           ("layer matmuls", layer_matmuls, (weights, h0)),
                           ("embed merge", embed_lookup, (weights, cand)),
                           ("head merges", global_merges, (weights, cand)),
                           ("head", head, (weights, h0))):
        compiled = merge_jit(fn)
        out[name] = (lambda c, a: lambda: jax.block_until_ready(c(*a)))(compiled, args)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    import jax
    import jax.numpy as jnp

    from evomerge_jax.evolve.evaluate import Evaluator
    from evomerge_jax.parallel.seeds import candidate_keys
    from evomerge_jax.searches.run import prepare

    root = Path(tempfile.mkdtemp(prefix="bench_ps_breakdown_"))
    world = build_world(root, args)
    search, tasks, tokenizer, _ = prepare(evolve_config(world, root, args.rows), log=lambda *_: 0)
    search.load()
    p = args.population
    genomes = np.random.default_rng(0).uniform(0.2, 0.8, (p, search.num_dims)).astype(np.float32)
    keys = candidate_keys(0, 0, range(p))
    rows = [tasks[0].fitness_rows(0, 0, 0)]
    whole = Evaluator(search.model, search.weights, tasks, tokenizer, population=p, chunk_size=p)
    model = whole.model
    teacher = whole._assemble("fitness", rows)[1]["teacher"]
    batch = {k: jnp.asarray(v) for k, v in teacher.items()}
    cand = jax.jit(model.candidates)(jnp.asarray(genomes), jnp.asarray(keys))
    parts = {"pass": lambda: whole.fitness_scores(genomes, keys, rows)}
    parts |= programs(model, whole.weights, cand, batch["tokens"], batch["mask"], batch["labels"],
                      batch["scored"])
    a = jnp.ones((2048, 2048), jnp.float32)
    mm = jax.jit(lambda x: x @ x)
    parts["matmul 2048^3"] = lambda: mm(a).block_until_ready()
    for fn in parts.values():  # compile and warm up
        fn()
    times = {name: [] for name in parts}
    for _ in range(args.rounds):
        for name, fn in parts.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    t = {name: float(np.median(v)) for name, v in times.items()}

    spec, n_tok = search.spec, args.rows * args.seq
    layer = sum(int(np.prod(spec.layer_shape(n))) for n in spec.layer_tensors)
    dense = args.layers * (layer - 2 * spec.hidden_size) + spec.vocab_size * spec.hidden_size
    attention = 4 * args.rows * args.seq**2 * spec.num_heads * spec.head_dim * args.layers
    model_flops = p * (2 * n_tok * dense + attention)
    layer_flops = p * 2 * n_tok * args.layers * (layer - 2 * spec.hidden_size)
    peak = 2 * 2048**3 / t["matmul 2048^3"]
    print(f"model: llama {world['params'] / 1e6:.1f}M params, {args.layers} layers, hidden "
          f"{args.hidden}, vocab {args.vocab}; dare_ties over base + 2 sources; perplexity "
          f"{args.rows} x {args.seq}; P = {p}; float32; {jax.devices()[0].platform}; median of "
          f"{args.rounds} interleaved rounds")
    print(f"float32 matmul (2048^3): {peak / 1e9:.1f} GFLOP/s; the pass: {model_flops / 1e9:.1f} "
          f"GFLOP of forward matmuls in {t['pass']:.2f} s = {model_flops / t['pass'] / 1e9:.1f} "
          f"GFLOP/s, {model_flops / t['pass'] / peak:.2f} of the matmul rate")
    shares = {
        "layer merges": t["layer merges"],
        "layer matmuls": t["layer matmuls"],
        "attention, norms, rest of the layers": t["layer forward"] - t["layer matmuls"],
        "embedding merge + lookup": t["embed merge"],
        "final norm + LM head merges": t["head merges"],
        "head: norm, LM head matmul, loss": t["head"],
    }
    shares["rest of the pass (scan, maps, genome decode, transfers)"] = t["pass"] - sum(
        shares.values())
    print(f"\nwhere the pass's {t['pass']:.2f} s go (sub-programs of the same pieces):")
    for name, sec in shares.items():
        print(f"  {name:58s} {sec:7.3f} s  {sec / t['pass']:6.1%}")
    print(f"  layer matmuls alone run at {layer_flops / t['layer matmuls'] / peak:.2f} of the "
          f"matmul rate; per round (s): " + "; ".join(
              f"{name} {[round(x, 3) for x in v]}" for name, v in times.items()))


if __name__ == "__main__":
    main()
