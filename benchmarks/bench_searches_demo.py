"""Every PS-genome search on the demo world, side by side on one budget of evaluations: CMA-ES PS
(the demo's own PS config), pareto (NSGA-II over l2_math and l2_general), m2n2 (archive = children
= the PS population) and gradient (Adam on the targets' NLL, steps chosen so its forward passes
stay within the budget). Same zoo, sources (base + l2_chat, math_a, math_b), DARE-TIES genome
(weight and density per source, one set for the layers and one for the embeddings and head: 12
genes), fitness tasks and minibatches as `evomerge demo`; each run's best is chosen on validation
and scored on validation and test (greedy exact match, percent).

    python benchmarks/bench_searches_demo.py [--quick] [--population 8 --generations 6]
        [--out ~/.cache/evomerge_jax/bench_searches_demo]

The zoo is built (minutes) or reused from OUT/zoo. `--quick` uses the quick zoo and the quick
demo's minibatches (a smoke run: the figures mean little). Evaluations: candidates scored on the
fitness split (PS, pareto: P x G; m2n2: archive + (G - 1) x children; gradient: its
`forward_passes`, one per step plus one per validation batch, backward passes not counted).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]
from evomerge_jax.demo import SIZES, _configs  # noqa: E402
from evomerge_jax.searches.run import evolve  # noqa: E402
from evomerge_jax.zoo import build_zoo  # noqa: E402

TASKS = ("l2_math", "l2_general")


def variants(ps: dict, population: int, generations: int) -> dict:
    """{search: config} on one budget of population x generations evaluations."""
    budget = population * generations
    strategy = {k: v for k, v in ps["strategy"].items()
                if k not in ("name", "population_size", "include_mean")}
    base = {**ps, "strategy": {**strategy, "generations": generations}}
    return {
        "ps (CMA-ES)": {**ps, "strategy": {**ps["strategy"], "population_size": population,
                                           "generations": generations}},
        "pareto": {**base, "search": "pareto", "objectives": list(TASKS),
                   "strategy": {**base["strategy"], "population_size": population}},
        "m2n2": {**base, "search": "m2n2",
                 "m2n2": {"archive_size": population, "children": population}},
        # half the budget in steps, validated at three of them (and the last)
        "gradient": {**base, "search": "gradient",
                     "gradient": {"steps": max(budget // 2, 1), "learning_rate": 0.05,
                                  "batch": 16, "validate_every": max(budget // 6, 1)}},
    }


def evaluations(search: str, results: dict, run_dir: Path, population: int,
                generations: int) -> int:
    if search == "gradient":
        lines = (run_dir / "log.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["forward_passes"]
    if search == "m2n2":
        return results["m2n2"]["evaluations"]
    return population * generations


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="~/.cache/evomerge_jax/bench_searches_demo")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--only", nargs="*", help="a subset of the searches")
    args = ap.parse_args()
    out = Path(args.out).expanduser().resolve()
    zoo = build_zoo(out / "zoo", quick=args.quick)
    ps = yaml.safe_load(_configs(zoo, out / "runs", SIZES[args.quick])["ps"].read_text())
    rows = []
    for search, cfg in variants(ps, args.population, args.generations).items():
        if args.only and search.split()[0] not in args.only:
            continue
        name = search.split()[0]
        cfg = {**cfg, "output_dir": str(out / "runs" / name)}
        path = out / "runs" / f"{name}.yml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        began = time.perf_counter()
        results = evolve(path, overwrite=True, progress=False, log=lambda *_: None, export=False)
        seconds = time.perf_counter() - began
        scores = results["scores"]["evolved"]
        cells = [100 * scores[split][t]["acc"] for split in ("validation", "test") for t in TASKS]
        extra = f" (front of {len(results['pareto']['points'])})" if "pareto" in results else ""
        spent = evaluations(name, results, out / "runs" / name, args.population,
                            args.generations)
        rows.append(f"| {search}{extra} | {spent} | " + " | ".join(f"{c:.1f}" for c in cells)
                    + f" | {seconds:.0f} |")
        print(rows[-1], flush=True)
    print("\n| search | evaluations | val l2_math | val l2_general | test l2_math | "
          "test l2_general | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
