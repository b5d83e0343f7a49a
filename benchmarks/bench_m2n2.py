"""search: m2n2 against CMA-ES PS on the same evaluation budget, on the world of
tests/test_m2n2.py: a base, two noisy fine-tunes of it, one perplexity task whose examples are half
source 0's own greedy continuations and half source 1's (32 + 32 per split); task_arithmetic, one
weight per layer and source (3 layers, 6 genes). M2N2: archive 8, 8 children per generation, 12
generations (8 + 11 x 8 = 96 evaluations); CMA-ES: population 8, 12 generations (96). Reports each
run's best (chosen on validation) on validation and test, next to both sources scored as plain
checkpoints, per seed.

    python benchmarks/bench_m2n2.py [--seeds 0 1 --generations 12]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import transformers
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
from evolve_world import continuation_records, make_world, write_config, write_jsonl  # noqa: E402
from evomerge_jax.searches.run import evolve  # noqa: E402

ARCHIVE = CHILDREN = POPULATION = 8


def union_task(world, root: Path) -> dict:
    halves = []
    for source, seed in ((0, 31), (1, 32)):
        model = transformers.AutoModelForCausalLM.from_pretrained(world["sources"][source])
        with torch.no_grad():
            halves.append([continuation_records(model.eval(), 32, seed * 10 + i)
                           for i in range(3)])
    files = {split: str(write_jsonl(root / f"{split}.jsonl", halves[0][i] + halves[1][i]))
             for i, split in enumerate(("fitness", "validation", "test"))}
    return {"name": "union", "type": "perplexity", "data": files, "prompt": "{prompt}",
            "target": "{target}", "batch_size": 64}


def run(world, task, path: Path, search: str, seed: int, generations: int, baselines=False):
    strategy = {"generations": generations, "seed": seed}
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"m2n2": {"archive_size": ARCHIVE, "children": CHILDREN}} if search == "m2n2" else {}
    path = write_config(path, world, [task], search=search, strategy=strategy,
                        merge={"method": "task_arithmetic", "evolve": ["weight"]},
                        grouping={"layers": "per_layer", "globals": "nearest"},
                        baselines=baselines, **extra)
    data = yaml.safe_load(path.read_text())
    if search == "m2n2":
        del data["strategy"]["population_size"]
    else:
        data["strategy"]["population_size"] = POPULATION
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return evolve(path, progress=False, log=lambda *_: None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--generations", type=int, default=12)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench_m2n2_"))
    world = make_world(root / "world")
    task = union_task(world, root / "union")
    budget = {"m2n2": ARCHIVE + (args.generations - 1) * CHILDREN,
              "ps": POPULATION * args.generations}
    print("| search | seed | evaluations | validation score | test score |")
    print("|---|---:|---:|---:|---:|")
    sources = None
    for seed in args.seeds:
        for search in ("m2n2", "ps"):
            results = run(world, task, root / f"{search}{seed}" / "cfg.yml", search, seed,
                          args.generations, baselines=sources is None)
            scores = results["scores"]
            if sources is None:
                sources = {k: v for k, v in scores.items() if k.startswith("source")}
            got = scores["evolved"]
            print(f"| {search} | {seed} | {budget[search]} | "
                  f"{got['validation']['union']['score']:.4f} | "
                  f"{got['test']['union']['score']:.4f} |", flush=True)
    for name, s in sources.items():
        print(f"| {name} | - | - | {s['validation']['union']['score']:.4f} | "
              f"{s['test']['union']['score']:.4f} |")


if __name__ == "__main__":
    main()
