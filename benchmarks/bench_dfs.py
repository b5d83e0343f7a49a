"""DFS scoring throughput: P candidate paths in one population pass against the same paths scored
one at a time (the jitted single-path forward, which runs only each path's used layers), same
models, batch and device, measured interleaved; plus the population pass's cost relative to
running only the used layers, counted in layer applications (FLOP-wise, the rows the chunks run)
and in time. The pass runs a used slot only for its users (`run_slots`, `--chunk` candidates at a
time); the same pass with chunk = P (every used slot for all P candidates: the cost of the pass
before issue 13) runs beside it.

    python benchmarks/bench_dfs.py [--layers 4 --hidden 256 --pop 16 --repeats 3 --batch 4 --seq 64
                                    --chunk C --rounds 5]

Candidates are drawn as a strategy would draw them around the initial mean: indicators
2σ (A's first repetition) or 0 plus σ·noise, scales 1 + σ·noise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import evomerge_jax as em  # noqa: E402
from evomerge_jax import dfs  # noqa: E402
from evomerge_jax.dfs.forward import auto_chunk  # noqa: E402


def _sources(args):
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 4,
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128))
    ckpts = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in (0, 1):
            torch.manual_seed(seed)
            transformers.LlamaForCausalLM(cfg).save_pretrained(Path(tmp) / str(seed))
            ckpts.append(em.load(Path(tmp) / str(seed)))
    return ckpts


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4, help="layers per source model")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--pop", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sigma", type=float, default=0.3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=None,
                    help="candidates per chunk of the pass (default: auto_chunk of batch x seq)")
    args = ap.parse_args()
    args.chunk = args.chunk or auto_chunk(args.pop, args.batch * args.seq)

    ckpts = _sources(args)
    stack = dfs.stack_sources(ckpts, ["A", "B"])
    spec = dfs.path_spec_for(ckpts, ["A", "B"], repeats=args.repeats)
    mean = dfs.initial_genome(spec, args.sigma)
    genomes = mean + args.sigma * jax.random.normal(jax.random.PRNGKey(0),
                                                    (args.pop, spec.num_genes))
    paths = dfs.decode_paths(spec, genomes)
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq)),
                         jnp.int32)
    mask = jnp.ones_like(tokens)

    def population(chunk=args.chunk):
        dfs.population_logits(stack.params, stack.spec, spec, genomes, tokens, mask,
                              chunk).block_until_ready()

    def all_candidates():
        population(args.pop)

    def one_at_a_time():
        for path in paths:
            dfs.logits_of_path(stack, path, tokens, mask).block_until_ready()

    compile_pop = _timed(population)
    compile_all = _timed(all_candidates)
    compile_single = _timed(one_at_a_time)  # compiles once per power-of-two length bucket
    pop_times, all_times, single_times = [], [], []
    for _ in range(args.rounds):  # interleaved, so that load changes hit all alike
        pop_times.append(_timed(population))
        all_times.append(_timed(all_candidates))
        single_times.append(_timed(one_at_a_time))
    t_pop, t_all, t_single = (float(np.median(t)) for t in (pop_times, all_times, single_times))

    lo, hi = spec.window
    used = np.array([[t in p.slots for t in range(lo, hi)] for p in paths])
    active = int(used.any(axis=0).sum())
    applied = int((-(-used.sum(axis=0) // args.chunk) * args.chunk).sum())  # rows the chunks run
    applied_all = args.pop * active        # every used slot for all P candidates
    needed = int(used.sum())               # layer applications of the used layers only
    lengths = [p.num_steps for p in paths]
    params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(ckpts[0].params))

    print(f"models: 2 x llama, {params / 1e6:.1f}M params, {args.layers} layers each, hidden "
          f"{args.hidden}; M={spec.num_layers}, r={args.repeats}, T={spec.num_slots}, usable "
          f"window {hi - lo} slots; batch {args.batch} x seq {args.seq}; float32; "
          f"{jax.devices()[0].platform}; median of {args.rounds}")
    print(f"population P={args.pop}, sigma {args.sigma}: path lengths {min(lengths)}-"
          f"{max(lengths)} (mean {np.mean(lengths):.1f}); slots used by some candidate: "
          f"{active} of {hi - lo}")
    print(f"  population pass   {args.pop / t_pop:8.2f} paths/s   ({t_pop * 1e3:8.1f} ms per "
          f"population; compile {compile_pop:.1f} s; chunk {args.chunk})")
    print(f"  all P per slot    {args.pop / t_all:8.2f} paths/s   ({t_all * 1e3:8.1f} ms per "
          f"population; compile {compile_all:.1f} s; chunk P: the old pass's cost)")
    print(f"  one at a time     {args.pop / t_single:8.2f} paths/s   ({t_single * 1e3:8.1f} ms per "
          f"population; compile {compile_single:.1f} s for "
          f"{len({1 << (n - 1).bit_length() for n in lengths})} length buckets)")
    print(f"  speed-up of the population pass: {t_single / t_pop:.2f}x (all P per slot: "
          f"{t_single / t_all:.2f}x; users only vs all P: {t_all / t_pop:.2f}x)")
    print(f"  cost vs used layers only: FLOP-wise {applied / needed:.2f}x ({applied} layer "
          f"applications for {needed} used; all P per slot {applied_all / needed:.2f}x), "
          f"time-wise {t_pop / t_single:.2f}x")
    print(f"  per round (ms) pass {[round(t * 1e3) for t in pop_times]}, all P "
          f"{[round(t * 1e3) for t in all_times]}, one at a time "
          f"{[round(t * 1e3) for t in single_times]}")


if __name__ == "__main__":
    main()
