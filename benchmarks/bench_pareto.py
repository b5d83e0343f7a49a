"""search: pareto against CMA-ES PS on the same budget, on the test world of tests/test_pareto.py
(a base, two noisy fine-tunes of it; task a = perplexity of source 0's own continuations, task b =
source 1's; task_arithmetic, one weight per source: 2 genes), with the true front from an 11 x 11
grid of weights. Reports, on validation: the hypervolume (2-D, reference point = the grid's worst
value on each objective) of the pareto run's front, of CMA-ES's single best (weighted sum a + b)
and of the grid's front; each end's best; and the evaluations each spent.

    python benchmarks/bench_pareto.py [--population 8 --generations 12 --seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from evolve_world import continuation_files, make_world, write_config  # noqa: E402
from evomerge_jax.evolve.config import load_config  # noqa: E402
from evomerge_jax.evolve.evaluate import Evaluator  # noqa: E402
from evomerge_jax.searches.pareto import objective_matrix, prepare_pareto  # noqa: E402
from evomerge_jax.searches.run import evolve  # noqa: E402


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D points (maximised) above the reference point."""
    pts = points[np.all(points > ref, axis=1)]
    pts = pts[np.argsort(-pts[:, 0])]
    area, best_y = 0.0, ref[1]
    for x, y in pts:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_pareto_"))
    world = make_world(root / "world")
    tasks = []
    for name, source, seed in (("a", 0, 21), ("b", 1, 22)):
        model = transformers.AutoModelForCausalLM.from_pretrained(world["sources"][source])
        with torch.no_grad():
            files = continuation_files(model.eval(), root / name, sizes=(32, 24, 24), seed=seed)
        tasks.append({"name": name, "type": "perplexity", "data": files, "prompt": "{prompt}",
                      "target": "{target}", "batch_size": 32})
    common = dict(merge={"method": "task_arithmetic", "evolve": ["weight"]},
                  grouping={"layers": "all", "globals": "nearest"})
    strategy = {"population_size": args.population, "generations": args.generations,
                "sigma": 0.5, "seed": args.seed}
    quiet = lambda *_: None  # noqa: E731
    (root / "p").mkdir()
    (root / "c").mkdir()
    pcfg = write_config(root / "p" / "cfg.yml", world, tasks, search="pareto",
                        objectives=["a", "b"], strategy=strategy, **common)
    ccfg = write_config(root / "c" / "cfg.yml", world, tasks, strategy=strategy, **common)
    front = evolve(pcfg, progress=False, log=quiet, export=False)["pareto"]["points"]
    single = evolve(ccfg, progress=False, log=quiet, export=False)
    search, loaded, tokenizer, _ = prepare_pareto(load_config(pcfg), log=quiet)
    search.load()
    evaluator = Evaluator(search.model, search.weights, loaded, tokenizer,
                          population=args.population)
    grid = np.linspace(0, 1, 11)
    genomes = np.array([[x, y] for x in grid for y in grid], np.float32)
    f = objective_matrix(evaluator.split_scores(genomes, np.zeros((len(genomes), 2), np.uint32),
                                                "validation"), ["a", "b"])
    ref = f.min(axis=0)
    run_f = np.array([[p["validation"]["a"], p["validation"]["b"]] for p in front])
    cma = single["scores"]["evolved"]["validation"]
    cma_f = np.array([[cma["a"]["score"], cma["b"]["score"]]])
    budget = args.population * args.generations
    rows = [("grid (11 x 11)", f, len(genomes)), ("pareto (NSGA-II)", run_f, budget),
            ("PS CMA-ES, a + b", cma_f, budget)]
    out = {}
    print("| search | evaluations | points | hypervolume (val) | best a (val) | best b (val) | "
          "best a + b (val) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, pts, evals in rows:
        hv = hypervolume(pts, ref)
        out[label] = {"evaluations": evals, "hypervolume": hv, "best_a": pts[:, 0].max(),
                      "best_b": pts[:, 1].max(), "best_sum": pts.sum(axis=1).max()}
        print(f"| {label} | {evals} | {len(pts)} | {hv:.4f} | {pts[:, 0].max():.4f} | "
              f"{pts[:, 1].max():.4f} | {pts.sum(axis=1).max():.4f} |")
    print(json.dumps({k: {m: float(v) for m, v in d.items()} for k, d in out.items()}))


if __name__ == "__main__":
    main()
