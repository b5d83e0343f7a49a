"""The PS population pass against two ways of scoring the same candidates, on one model, one task
and one machine, in one run:

  population  all P candidates merged inside the layer scan and scored in one compiled call
  one-by-one  the same engine and program, one candidate per call
  mergekit    the mergekit-evolve pipeline: mergekit merges each candidate (its public `run_merge`,
              which writes the merged model to disk, as mergekit-evolve does by default), then
              transformers loads it and runs the forward pass

Also: achieved FLOP/s of the population pass (XLA's own FLOP count of the compiled program over
its wall time) against the machine's measured float32 matmul FLOP/s, and the compiled program's
memory (XLA's buffer assignment: arguments + temporaries) at P = 1, 16 and 64.

    python benchmarks/bench_population.py [--hidden 512 --layers 8 --vocab 32000 --rows 8 --seq 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_world(root: Path, args) -> dict:
    import json

    import torch
    import transformers

    from evomerge_jax.tokenizer_build import build_word_tokenizer

    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 2.6875),
        num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
        num_key_value_heads=args.hidden // 128, max_position_embeddings=512, bos_token_id=1,
        eos_token_id=2, pad_token_id=0)
    words = [f"t{i}" for i in range(args.vocab - 4)]
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).eval()
    paths = {}
    for k, name in enumerate(("base", "src0", "src1")):
        model = base if k == 0 else transformers.LlamaForCausalLM(cfg).eval()
        if k:
            model.load_state_dict(base.state_dict())
            torch.manual_seed(k)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.05 * p.std() * torch.randn_like(p))
        model.save_pretrained(root / name)
        build_word_tokenizer(words, root / name, vocab_size=args.vocab)
        paths[name] = root / name
    rng = np.random.default_rng(0)
    data = root / "ppl.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(rng.choice(words[:2000], args.seq - 1))})
                            + "\n" for _ in range(args.rows)))
    params = sum(p.numel() for p in base.parameters())
    return {"paths": paths, "data": data, "params": params}


def evolve_config(world: dict, root: Path, rows: int):
    from evomerge_jax.evolve.config import parse_config

    data = str(world["data"])
    return parse_config({
        "base_model": str(world["paths"]["base"]),
        "models": [str(world["paths"]["src0"]), str(world["paths"]["src1"])],
        "merge": {"method": "dare_ties", "evolve": ["weight", "density"]},
        "grouping": {"layers": "per_layer", "globals": "own"},
        "tasks": [{"name": "ppl", "type": "perplexity", "prompt": "", "target": "{text}",
                   "batch_size": rows, "data": {"fitness": data, "validation": data,
                                                "test": data}}],
        "output_dir": str(root / "run"), "baselines": False}, "bench")


def timed(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_flops(n: int = 2048) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timed(lambda: f(a).block_until_ready(), 5)


def mergekit_candidate(search, genome, key, tokens, out: Path) -> float:
    """One candidate the mergekit-evolve way: merge to disk with mergekit, load, forward."""
    import torch
    import transformers
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from evomerge_jax.ps.export import recipe_yaml

    text = recipe_yaml(search, genome)
    run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), str(out),
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True,
                                   lazy_unpickle=False, random_seed=0), config_source=text)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        logits = model(torch.tensor(tokens)).logits
    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    return float(-logp.gather(-1, torch.tensor(tokens)[:, 1:, None]).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--population", type=int, default=16)
    ap.add_argument("--mergekit-candidates", type=int, default=3)
    ap.add_argument("--memory-only", action="store_true",
                    help="only the compiled memory at P = 1, 16, 64 (no timing, no mergekit)")
    ap.add_argument("--global-batch", type=int, default=None,
                    help="candidates per step of the global-tensor map (default: from memory)")
    args = ap.parse_args()
    import jax
    import torch

    from evomerge_jax.evolve.evaluate import Evaluator
    from evomerge_jax.parallel.seeds import candidate_keys
    from evomerge_jax.searches.run import prepare

    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="bench_population_"))
    world = build_world(root, args)
    search, tasks, tokenizer, _ = prepare(evolve_config(world, root, args.rows), log=lambda *_: 0)
    search.load()
    p = args.population
    genomes = np.random.default_rng(0).uniform(0.2, 0.8, (64, search.num_dims)).astype(np.float32)
    keys = candidate_keys(0, 0, range(64))
    rows = [tasks[0].fitness_rows(0, 0, 0)]
    layer = sum(int(np.prod(search.spec.layer_shape(n))) for n in search.spec.layer_tensors)
    print(f"model: llama {world['params'] / 1e6:.1f}M params ({args.layers} layers, hidden "
          f"{args.hidden}, vocab {args.vocab}); base + 2 sources; dare_ties, weight and density per "
          f"layer and source ({search.num_dims} genes); perplexity task, {args.rows} rows x "
          f"{args.seq} tokens; float32; {jax.device_count()} CPU device, "
          f"{torch.get_num_threads()} torch threads")

    whole = Evaluator(search.model, search.weights, tasks, tokenizer, population=p, chunk_size=p,
                      global_batch=args.global_batch)
    if args.memory_only:
        return memory_report(search, whole, genomes, keys, rows, args, layer)
    single = Evaluator(search.model, search.weights, tasks, tokenizer, population=p, chunk_size=1)
    t_pop = timed(lambda: whole.fitness_scores(genomes[:p], keys[:p], rows), 3)
    t_one = timed(lambda: single.fitness_scores(genomes[:p], keys[:p], rows), 1)
    nll_pop = whole.fitness_scores(genomes[:p], keys[:p], rows)["ppl"]["nll"]
    tokens = np.stack([tasks[0].splits["fitness"].arrays["tokens"][i] for i in range(args.rows)])
    tokens = tokens[:, :int(tasks[0].splits["fitness"].arrays["mask"][0].sum())]
    n_mk = args.mergekit_candidates
    start = time.perf_counter()
    nll_mk = [mergekit_candidate(search, genomes[c], keys[c], tokens, root / f"mk{c}")
              for c in range(n_mk)]
    t_mk = (time.perf_counter() - start) / n_mk
    print(f"\ncandidate evaluations per second (same {p} candidates; mergekit: first {n_mk})")
    print(f"  population pass, P={p} per call  {p / t_pop:8.2f} /s   ({t_pop:.2f} s per generation)")
    print(f"  same engine, one per call      {p / t_one:8.2f} /s   ({t_one / p:.2f} s per candidate)")
    print(f"  mergekit merge + transformers  {1 / t_mk:8.2f} /s   ({t_mk:.2f} s per candidate)")
    print(f"  speed-up: {t_one / t_pop:.1f}x over one-by-one, {t_mk * p / t_pop:.1f}x over mergekit")
    print(f"  nll of candidates 0-{n_mk - 1}: pass {np.round(nll_pop[:n_mk], 4).tolist()}, mergekit "
          f"{np.round(nll_mk, 4).tolist()} (DARE masks differ: mergekit draws its own)")

    compiled = compiler(whole, genomes, keys, rows)
    spec, n_tok = search.spec, args.rows * args.seq
    # Matmul weights a token meets (the two norms of a layer excluded), and attention's two matmuls.
    dense = args.layers * (layer - 2 * spec.hidden_size) + spec.vocab_size * spec.hidden_size
    attention = 4 * args.rows * args.seq**2 * spec.num_heads * spec.head_dim * args.layers
    model_flops = p * (2 * n_tok * dense + attention)
    xla_flops = compiled(p).cost_analysis()["flops"]
    peak = matmul_flops()
    print(f"\nachieved FLOP/s of the population pass: model FLOPs (matmuls of the forward, "
          f"{model_flops / 1e9:.1f} GFLOP per generation) / {t_pop:.2f} s = "
          f"{model_flops / t_pop / 1e9:.1f} GFLOP/s; measured float32 matmul (2048^3): "
          f"{peak / 1e9:.1f} GFLOP/s; ratio {model_flops / t_pop / peak:.2f} (XLA's own count of "
          f"the program, which counts each loop body once: {xla_flops / 1e9:.1f} GFLOP)")

    memory_report(search, whole, genomes, keys, rows, args, layer)


def compiler(whole, genomes, keys, rows):
    """n -> the population pass compiled for the first n candidates."""
    import jax.numpy as jnp

    from evomerge_jax.evolve.evaluate import population_pass

    _, device = whole._assemble("fitness", rows)

    def compiled(n):
        return population_pass.lower(
            whole.model.__class__(**{**whole.model.__dict__, "global_batch": min(
                whole.global_batch, n)}), whole.generations, whole.mesh, whole.weights,
            jnp.asarray(genomes[:n]), jnp.asarray(keys[:n]), device).compile()
    return compiled


def memory_report(search, whole, genomes, keys, rows, args, layer):
    import jax

    compiled = compiler(whole, genomes, keys, rows)
    weights = sum(x.nbytes for x in jax.tree.leaves(search.weights))
    model_mib, layer_mib = weights / 3 / 2**20, layer * 4 / 2**20
    print(f"\ncompiled memory (XLA buffer assignment); the sources (base + 2) take "
          f"{weights / 2**20:.0f} MiB, one model {model_mib:.0f} MiB, one layer {layer_mib:.1f} MiB; "
          f"global tensors merged {whole.global_batch} candidates at a time")
    first = None
    for n in (1, 16, 64):
        mem = compiled(n).memory_analysis()
        temp = mem.temp_size_in_bytes / 2**20
        first = temp if first is None else first
        extra = "" if n == 1 else (f"; each candidate beyond the first adds "
                                   f"{(temp - first) / (n - 1):.1f} MiB = "
                                   f"{(temp - first) / (n - 1) / layer_mib:.1f} layers")
        print(f"  P={n:<3} arguments {mem.argument_size_in_bytes / 2**20:5.0f} MiB, temporaries "
              f"{temp:6.0f} MiB (= {temp / model_mib:4.1f} models){extra}")


if __name__ == "__main__":
    main()
