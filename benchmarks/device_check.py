"""One device check of the engine on an accelerator, written to one JSON (issue 13, item 7).

    python benchmarks/device_check.py [--out device_check.json]   # one H100/H200-class GPU, < 8 min
    python benchmarks/device_check.py --tiny                       # the same script on CPU, seconds

Sections (each records its own wall time):
  parity      forward logits of the engine on the device (bfloat16 and float32) against
              transformers in float32 on the host, on a small random Llama
  mfu         the PS population pass (dare_ties, perplexity task) in bfloat16 on a Llama-shaped
              model of about 1B parameters built here with random weights (no download), at
              P = 1, 8, 32: model FLOPs (forward matmuls) over wall time, against the device's
              measured bfloat16 matmul rate and its nominal dense peak where known
  memory      the device's peak bytes in use after the pass against `evomerge plan`'s estimate
  generation  new tokens/s of a `generate` task through the pass, for every generation mode the
              engine has (`GENERATION_MODES`: `cached` merges each layer once per call, `remerge`
              at every decode step), and whether their scores agree
  kernels     the fused Pallas merge (kernels/) against its jnp reference on a full-size MLP
              tensor: time of each and their largest difference
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bfloat16 peak FLOP/s by device kind (vendor datasheets, no sparsity).
NOMINAL_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "GH200": 989e12}
# Today's engine decodes by re-merging every layer at every step; an engine that also caches the
# merged layers lists both modes here and `generation_config` selects them.
GENERATION_MODES = ("cached", "remerge")  # compute.generation
SIZES = {
    "full": dict(hidden=2048, layers=16, inter=5504, vocab=32000, rows=8, seq=512,
                 populations=(1, 8, 32), gen_population=8, gen_rows=4, new_tokens=32,
                 parity=dict(hidden=512, layers=4, inter=1376, vocab=32000), kernel_p=8),
    "tiny": dict(hidden=64, layers=2, inter=172, vocab=256, rows=2, seq=16,
                 populations=(1, 2), gen_population=2, gen_rows=2, new_tokens=4,
                 parity=dict(hidden=64, layers=2, inter=172, vocab=256), kernel_p=2),
}


def llama_config(hidden, layers, inter, vocab):
    import transformers
    return transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 128, 1),
        max_position_embeddings=1024, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build_world(root: Path, size: dict, dtype: str) -> dict:
    """Base + two sources (base + 2% seeded noise) saved as HF dirs with a word tokenizer."""
    import torch
    import transformers

    from evomerge_jax.tokenizer_build import build_word_tokenizer

    cfg = llama_config(size["hidden"], size["layers"], size["inter"], size["vocab"])
    words = [f"t{i}" for i in range(size["vocab"] - 4)]
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(cfg).eval()
    paths = {}
    for k, name in enumerate(("base", "src0", "src1")):
        model = base
        if k:
            model = transformers.LlamaForCausalLM(cfg).eval()
            model.load_state_dict(base.state_dict())
            torch.manual_seed(k)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.02 * p.std() * torch.randn_like(p))
        model.to(getattr(torch, dtype)).save_pretrained(root / name)
        build_word_tokenizer(words, root / name, vocab_size=size["vocab"])
        paths[name] = root / name
    rng = np.random.default_rng(0)
    ppl, gen = root / "ppl.jsonl", root / "gen.jsonl"
    ppl.write_text("".join(json.dumps({"text": " ".join(rng.choice(words[:2000], size["seq"] - 1))})
                           + "\n" for _ in range(size["rows"])))
    gen.write_text("".join(json.dumps({"q": " ".join(rng.choice(words[:2000], 8)), "a": "1"})
                           + "\n" for _ in range(size["gen_rows"])))
    params = sum(p.numel() for p in base.parameters())
    return {"paths": paths, "ppl": ppl, "gen": gen, "params": params, "root": root}


def evolve_config(world: dict, task: dict, population: int):
    from evomerge_jax.evolve.config import parse_config

    return parse_config({
        "base_model": str(world["paths"]["base"]),
        "models": [str(world["paths"]["src0"]), str(world["paths"]["src1"])],
        "merge": {"method": "dare_ties", "evolve": ["weight", "density"]},
        "grouping": {"layers": "per_layer", "globals": "own"},
        "strategy": {"population_size": population},
        "tasks": [task], "compute": {"dtype": "bfloat16"},
        "output_dir": str(world["root"] / "run"), "baselines": False}, "device_check")


def ppl_task(world, rows):
    data = str(world["ppl"])
    return {"name": "ppl", "type": "perplexity", "prompt": "", "target": "{text}",
            "batch_size": rows, "data": {"fitness": data, "validation": data, "test": data}}


def generation_config(world, size, mode: str) -> dict:
    """The generate task of `mode` (a name in GENERATION_MODES)."""
    if mode not in GENERATION_MODES:
        raise ValueError(f"unknown generation mode {mode!r}")
    data = str(world["gen"])
    return {"name": "gen", "type": "generate", "prompt": "{q}", "target": "{a}",
            "max_new_tokens": size["new_tokens"], "compare": "string", "batch_size":
            size["gen_rows"], "data": {"fitness": data, "validation": data, "test": data}}


def timed(fn, repeats: int = 2) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(min(times))


def matmul_rate(n: int, dtype) -> float:
    import jax
    import jax.numpy as jnp
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), dtype)
    f = jax.jit(lambda x: x @ x)
    return 2 * n**3 / timed(lambda: f(a).block_until_ready(), 3)


def parity(root: Path, size: dict) -> dict:
    import jax.numpy as jnp
    import torch
    import transformers

    from evomerge_jax.checkpoint import load
    from evomerge_jax.model import forward

    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(llama_config(**size["parity"])).eval()
    model.save_pretrained(root / "parity")
    tokens = np.random.default_rng(1).integers(3, size["parity"]["vocab"], (2, 32))
    with torch.no_grad():
        ref = model(torch.tensor(tokens)).logits.double().numpy()
    out = {}
    for dtype, bound in (("float32", 1e-3), ("bfloat16", 0.05)):
        ckpt = load(root / "parity", dtype)
        logits = np.asarray(forward(ckpt.params, ckpt.spec, jnp.asarray(tokens),
                                    jnp.ones(tokens.shape, bool)), np.float64)
        rel = float(np.abs(logits - ref).max() / np.abs(ref).max())
        agree = float((logits.argmax(-1) == ref.argmax(-1)).mean())
        out[dtype] = {"max_abs_error_over_max_logit": rel, "argmax_agreement": agree,
                      "bound": bound, "ok": rel < bound}
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
    return out


def population_section(world, size, peak_measured, nominal) -> tuple[dict, dict]:
    import jax

    from evomerge_jax.evolve.evaluate import Evaluator
    from evomerge_jax.parallel.seeds import candidate_keys
    from evomerge_jax.searches.plan import plan_memory
    from evomerge_jax.searches.run import prepare

    top = max(size["populations"])
    cfg = evolve_config(world, ppl_task(world, size["rows"]), top)
    search, tasks, tokenizer, _ = prepare(cfg, log=lambda *_: 0)
    search.load()
    genomes = np.random.default_rng(0).uniform(0.2, 0.8, (top, search.num_dims)).astype(np.float32)
    keys = candidate_keys(0, 0, range(top))
    rows = [tasks[0].fitness_rows(0, 0, 0)]
    spec, n_tok, layers = search.spec, size["rows"] * size["seq"], size["layers"]
    layer = sum(int(np.prod(spec.layer_shape(n))) for n in spec.layer_tensors)
    dense = layers * (layer - 2 * spec.hidden_size) + spec.vocab_size * spec.hidden_size
    attention = 4 * size["rows"] * size["seq"] ** 2 * spec.num_heads * spec.head_dim * layers
    results = {"params": world["params"], "rows": size["rows"], "seq": size["seq"],
               "kernels": search.model.kernels, "by_population": {}}
    for p in size["populations"]:
        ev = Evaluator(search.model, search.weights, tasks, tokenizer, population=p, chunk_size=p)
        seconds = timed(lambda: ev.fitness_scores(genomes[:p], keys[:p], rows))
        flops = p * (2 * n_tok * dense + attention)
        results["by_population"][str(p)] = {
            "seconds": seconds, "model_tflops": flops / 1e12,
            "mfu_vs_measured_matmul": flops / seconds / peak_measured,
            "mfu_vs_nominal": None if nominal is None else flops / seconds / nominal}
    stats = jax.local_devices()[0].memory_stats() or {}
    plan = plan_memory(cfg, device_memory=stats.get("bytes_limit", 80 * 2**30), check=False)
    memory = {"peak_bytes_in_use": stats.get("peak_bytes_in_use"), "plan_total_bytes": plan.total,
              "plan_chunk": plan.chunk, "population": top}
    if memory["peak_bytes_in_use"]:
        memory["measured_over_plan"] = memory["peak_bytes_in_use"] / plan.total
    return results, memory


def plain(value):
    """Scores (dicts of arrays) as JSON-ready lists, comparable with ==."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    return np.asarray(value).tolist()


def generation_section(world, size) -> dict:
    from evomerge_jax.evolve.evaluate import Evaluator
    from evomerge_jax.parallel.seeds import candidate_keys
    from evomerge_jax.searches.run import prepare

    p, out = size["gen_population"], {}
    for mode in GENERATION_MODES:
        cfg = evolve_config(world, generation_config(world, size, mode), p)
        search, tasks, tokenizer, _ = prepare(cfg, log=lambda *_: 0)
        search.load()
        genomes = np.random.default_rng(0).uniform(0.2, 0.8, (p, search.num_dims))
        genomes = genomes.astype(np.float32)
        ev = Evaluator(search.model, search.weights, tasks, tokenizer, population=p, chunk_size=p,
                       generation=mode)
        rows = [tasks[0].fitness_rows(0, 0, 0)]
        keys = candidate_keys(0, 0, range(p))
        seconds = timed(lambda: ev.fitness_scores(genomes, keys, rows), 1)
        new = p * size["gen_rows"] * size["new_tokens"]
        out[mode] = {"population": p, "new_tokens": new, "seconds": seconds,
                     "tokens_per_second": new / seconds,
                     "scores": plain(ev.fitness_scores(genomes, keys, rows))}
    if len(out) > 1:
        scores = [out[mode]["scores"] for mode in GENERATION_MODES]
        out["modes_agree"] = all(s == scores[0] for s in scores)
    return out


def kernels_section(size: dict, interpret: bool) -> dict:
    import jax

    from evomerge_jax.kernels import choose_backend, population_merge

    rng = np.random.default_rng(0)
    shape, p = (size["inter"], size["hidden"]), size["kernel_p"]
    base = rng.standard_normal(shape).astype(np.float32)
    sources = (base + 0.02 * rng.standard_normal((2, *shape))).astype(np.float32)
    weight = rng.uniform(0.2, 0.8, (p, 2)).astype(np.float32)
    density = rng.uniform(0.2, 0.8, (p, 2)).astype(np.float32)
    keys = rng.integers(0, 2**32, (p, 2), dtype=np.uint32)
    out = {"shape": list(shape), "population": p, "interpret": interpret,
           "auto_backend": choose_backend("auto")[0]}
    for method in ("ties", "dare_ties"):
        fns = {b: jax.jit(lambda x, s, w, d, b=b: population_merge(  # arrays as arguments:
            method, x, s, {"weight": w, "density": d}, keys, backend=b,  # XLA would fold them
            out_dtype="bfloat16", interpret=interpret)) for b in ("pallas", "jnp")}
        args = (base, sources, weight, density)
        results = {b: np.asarray(f(*args), np.float32) for b, f in fns.items()}
        seconds = {b: timed(lambda f=f: f(*args).block_until_ready()) for b, f in fns.items()}
        diff = float(np.abs(results["pallas"] - results["jnp"]).max())
        scale = float(np.abs(results["jnp"]).max())
        out[method] = {"pallas_seconds": seconds["pallas"], "jnp_seconds": seconds["jnp"],
                       "pallas_over_jnp_time": seconds["pallas"] / seconds["jnp"],
                       "max_abs_difference": diff, "equal": diff <= 2 ** -7 * scale}
    out["ok"] = all(out[m]["equal"] for m in ("ties", "dare_ties"))
    return out


def run(tiny: bool, out_path: Path) -> dict:
    import jax
    import jax.numpy as jnp

    size = SIZES["tiny" if tiny else "full"]
    device = jax.local_devices()[0]
    kind = device.device_kind
    nominal = next((v for k, v in NOMINAL_BF16.items() if k in kind), None)
    report = {"tiny": tiny, "device": {"platform": device.platform, "kind": kind,
                                       "jax": jax.__version__}, "seconds": {}}
    root = Path(tempfile.mkdtemp(prefix="device_check_"))

    def section(name, fn):
        start = time.perf_counter()
        value = fn()
        report["seconds"][name] = time.perf_counter() - start
        return value

    try:
        report["parity"] = section("parity", lambda: parity(root, size))
        peak = section("matmul", lambda: matmul_rate(512 if tiny else 8192, jnp.bfloat16))
        report["matmul"] = {"bfloat16_flops_measured": peak, "bfloat16_flops_nominal": nominal}
        world = section("build", lambda: build_world(root, size, "float32" if tiny else "bfloat16"))
        report["mfu"], report["memory"] = section(
            "mfu", lambda: population_section(world, size, peak, nominal))
        report["generation"] = section("generation", lambda: generation_section(world, size))
        report["kernels"] = section("kernels", lambda: kernels_section(
            size, interpret=device.platform == "cpu"))
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the models (GBs at full size)
    report["ok"] = bool(report["parity"]["ok"] and report["kernels"]["ok"])
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out_path)  # atomic: a reader never sees half a report
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny model on CPU, in seconds")
    ap.add_argument("--out", type=Path, default=Path("device_check.json"))
    args = ap.parse_args(argv)
    report = run(args.tiny, args.out)
    print(json.dumps({k: report[k] for k in ("ok", "seconds")}, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
