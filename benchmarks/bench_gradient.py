"""search: gradient against CMA-ES PS on the known-optimum setting of tests/test_evolve_optimum.py
(the target = task arithmetic of the two sources with weights (0.3, 0.7); fitness and validation:
exact match of the target's 2-token greedy continuations; task_arithmetic, one weight per source:
2 genes). Both runs in one process, one after the other; reports for each: candidate forward
passes until the chosen candidate (CMA-ES: each generation's best; gradient: each step's genes) is
within 0.05 of the true weights, passes spent in all, wall time, the best (chosen on validation)
and its test accuracy; and the ratio of passes to the tolerance. A gradient step's backward pass
costs about two forward passes: the compute ratio counts each step as three.

    python benchmarks/bench_gradient.py [--steps 20 --learning-rate 0.05 --generations 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from evolve_world import continuation_files, make_world, write_config  # noqa: E402
from evomerge_jax.searches.run import evolve  # noqa: E402
from test_evolve_optimum import (TOLERANCE, TRUE_WEIGHTS, _target_model,  # noqa: E402
                                 cma_es_passes_to_tolerance, gradient_passes_to_tolerance)


def run(root: Path, world, task, name: str, **sections) -> tuple[dict, list, float]:
    (root / name).mkdir()
    cfg = write_config(root / name / "cfg.yml", world, [task],
                       merge={"method": "task_arithmetic", "evolve": ["weight"]},
                       grouping={"layers": "all", "globals": "nearest"}, **sections)
    began = time.perf_counter()
    results = evolve(cfg, progress=False, log=lambda *_: None, export=False)
    seconds = time.perf_counter() - began
    lines = [json.loads(x) for x in (root / name / "run" / "log.jsonl").open()]
    return results, lines, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--generations", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = make_world(root / "world")
        with torch.no_grad():
            files = continuation_files(_target_model(world), root / "agree", sizes=(64, 32, 32),
                                       seed=9)
        task = {"name": "agree", "type": "exact_match", "data": files, "prompt": "{prompt}",
                "target": "{target}", "append_eos": False, "batch_size": 64}
        cma = run(root, world, task, "cma", strategy={
            "name": "CMA_ES", "population_size": 8, "generations": args.generations,
            "sigma": 0.2, "seed": 1})
        grad = run(root, world, task, "gradient", search="gradient", strategy={"seed": 1},
                   gradient={"loss": "nll", "steps": args.steps,
                             "learning_rate": args.learning_rate})
    to_tol = {"CMA-ES PS": cma_es_passes_to_tolerance(cma[1]),
              "gradient": gradient_passes_to_tolerance(grad[1])}
    total = {"CMA-ES PS": sum(x["population"] + 1 for x in cma[1]),
             "gradient": grad[1][-1]["forward_passes"]}
    print(f"true weights {TRUE_WEIGHTS}, tolerance {TOLERANCE}")
    print("| search | passes to tolerance | passes in all | seconds | best weights | test acc |")
    print("|---|---:|---:|---:|---|---:|")
    for name, (results, _, seconds) in (("CMA-ES PS", cma), ("gradient", grad)):
        w = np.round(np.asarray(results["best"]["recipe"]["values"]["weight"])[0], 3).tolist()
        acc = results["scores"]["evolved"]["test"]["agree"]["acc"]
        print(f"| {name} | {to_tol[name]} | {total[name]} | {seconds:.1f} | {w} | {acc:.4f} |")
    if None not in to_tol.values():
        steps = next(x["step"] for x in grad[1] if x["forward_passes"] == to_tol["gradient"]) + 1
        compute = to_tol["gradient"] + 2 * steps
        print(f"passes to tolerance, CMA-ES / gradient: {to_tol['CMA-ES PS'] / to_tol['gradient']:.1f}"
              f"; counting a backward pass as two forward passes: "
              f"{to_tol['CMA-ES PS'] / compute:.1f}")


if __name__ == "__main__":
    main()
