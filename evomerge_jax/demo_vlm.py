"""`evomerge demo --vlm`: EvoVLM (Akiba et al. 2025, §4.2) in small, on the demo world.

1. The zoo (demo.py's, cached) and, in its folder, a tiny LLaVA: the zoo base as language tower,
   a random frozen CLIP tower and a projector, trained to answer picture questions in L1
   (zoo/vision_build.py); the vision world's held-out pictures and L1/L2 questions as tasks.
2. The sources: the LLaVA (answers in L1) and the zoo's L2 chat model (speaks L2, never saw a
   picture), both scored behind the LLaVA's vision side.
3. PS (DARE-TIES over the base with the LLaVA's language tower and l2_chat), DFS (A = the LLaVA,
   B = l2_chat) and PS+DFS (A = the PS result), all with `vision_model:` the LLaVA and fitness
   greedy exact match on L2 picture questions; each search run for several strategy seeds.
4. Test scores (L2 and L1 picture questions) of every source and merge from its exported LLaVA
   dir; results.md / results.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from .demo import persistent_compile_cache, pct, write_yaml
from .evolve.report import print_table
from .searches.run import eval_model, evolve
from .zoo import build_zoo
from .zoo.vision_build import QUICK, VisionRecipe, build_vlm

TASKS = ("l2_vqa", "l1_vqa")
SIZES = {False: {"ps_population": 6, "ps_generations": 4, "dfs_population": 6,
                 "dfs_generations": 3, "dfs_repeats": 2, "batch": 48, "seeds": (0, 1, 2)},
         True: {"ps_population": 4, "ps_generations": 2, "dfs_population": 4,
                "dfs_generations": 2, "dfs_repeats": 2, "batch": 16, "seeds": (0,)}}


def _task(tasks: Path, name: str, batch: int) -> dict:
    return {"name": name, "type": "exact_match", "batch_size": batch,
            "data": {s: str(tasks / name / f"{s}.jsonl") for s in ("fitness", "validation",
                                                                    "test")},
            "prompt": "{prompt}", "target": " {target}"}


def _configs(zoo, llava: Path, tasks: Path, out: Path, size: dict, seed: int) -> dict:
    common = {"tokenizer": str(llava), "vision_model": str(llava), "baselines": False}
    fit = [_task(tasks, "l2_vqa", size["batch"])]
    l2 = str(zoo.sources["l2_chat"])
    eval_cfg = {"search": "ps", "base_model": str(zoo.base), "models": [l2],
                "tasks": [_task(tasks, t, 96) for t in TASKS], "output_dir": str(out / "eval"),
                **common}
    ps = {"search": "ps", "base_model": str(zoo.base), "models": [str(llava), l2],
          "merge": {"method": "dare_ties", "evolve": ["weight", "density"],
                    "parameters": {"normalize": False}},
          "grouping": {"layers": "all", "globals": "own"},
          "strategy": {"name": "CMA_ES", "population_size": size["ps_population"],
                       "generations": size["ps_generations"], "mean": 0.5, "sigma": 1 / 6,
                       "seed": seed, "include_mean": True},
          "tasks": fit, "output_dir": str(out / f"ps_s{seed}"), **common}

    def dfs(name: str, a: str) -> dict:
        return {"search": "dfs", "base_model": a, "models": [a, l2],
                "dfs": {"a": a, "b": l2, "repeats": size["dfs_repeats"]},
                "strategy": {"name": "CMA_ES", "population_size": size["dfs_population"],
                             "generations": size["dfs_generations"], "seed": seed,
                             "include_mean": True},
                "tasks": fit, "output_dir": str(out / f"{name}_s{seed}"), **common}

    cfg = out / "configs"
    return {"eval": write_yaml(cfg / "eval.yml", eval_cfg),
            "ps": write_yaml(cfg / f"ps_s{seed}.yml", ps),
            "dfs": write_yaml(cfg / f"dfs_s{seed}.yml", dfs("dfs", str(llava))),
            "ps+dfs": write_yaml(cfg / f"ps+dfs_s{seed}.yml",
                             dfs("ps+dfs", str(out / f"ps_s{seed}" / "best")))}


def _scores(model_dir, eval_cfg: Path) -> dict:
    raw = eval_model(model_dir, eval_cfg, splits=("test",), log=lambda _: None)["test"]
    return {t: pct(raw[t]["acc"]) for t in TASKS}


def _markdown(rows: list[dict], seconds: dict, seeds) -> str:
    lines = ["# evomerge demo --vlm", "",
             ("Greedy exact match (%) on held-out test pictures; merges: mean over strategy "
              f"seeds {list(seeds)} (each seed's score in brackets)."), "",
             "| model | kind | l2_vqa (fitness language) | l1_vqa |", "|---|---|---:|---:|"]
    def each(r: dict, t: str) -> str:
        return f" ({', '.join(f'{x:.1f}' for x in r['per_seed'][t])})" if "per_seed" in r else ""

    for r in rows:
        lines.append(f"| {r['name']} | {r['kind']} | {r['l2_vqa']:.1f}{each(r, 'l2_vqa')} | "
                     f"{r['l1_vqa']:.1f}{each(r, 'l1_vqa')} |")
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()), ""]
    return "\n".join(lines)


def run_vlm_demo(out="runs/demo-vlm", quick: bool = False, seed: int = 0, log=print,
                 progress: bool = True, recipe: VisionRecipe | None = None,
                 zoo_recipe=None) -> dict:
    """`recipe` / `zoo_recipe` replace the LLaVA's and the zoo's recipes (tests: micro sizes)."""
    start = time.time()
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    persistent_compile_cache(out / "jax_cache")
    zoo = build_zoo(out / "zoo", seed=seed, quick=quick, log=log, progress=progress,
                    recipe=zoo_recipe)
    seconds = {"zoo": round(time.time() - start, 1)}
    t = time.time()
    llava, tasks = build_vlm(zoo, recipe or (QUICK if quick else VisionRecipe(seed=seed)), log)
    seconds["vlm"] = round(time.time() - t, 1)
    size = SIZES[quick]
    configs = {s: _configs(zoo, llava, tasks, out, size, s) for s in size["seeds"]}
    eval_cfg = configs[size["seeds"][0]]["eval"]

    t = time.time()
    rows = [{"name": "llava (L1 VLM)", "kind": "source", "path": str(llava),
             **_scores(llava, eval_cfg)},
            {"name": "l2_chat", "kind": "source", "path": str(zoo.sources["l2_chat"]),
             **_scores(zoo.sources["l2_chat"], eval_cfg)}]
    seconds["score_sources"] = round(time.time() - t, 1)
    for kind in ("ps", "dfs", "ps+dfs"):
        t = time.time()
        per_seed = {task: [] for task in TASKS}
        paths = []
        for s in size["seeds"]:
            log(f"\n== {kind} search, seed {s} ==")
            cfg = configs[s][kind]
            evolve(cfg, overwrite=True, progress=progress, log=log)
            best = Path(yaml.safe_load(cfg.read_text())["output_dir"]) / "best"
            paths.append(str(best))
            for task, v in _scores(best, eval_cfg).items():
                per_seed[task].append(v)
        rows.append({"name": f"{kind} merge", "kind": kind, "paths": paths, "per_seed": per_seed,
                     **{task: round(sum(v) / len(v), 1) for task, v in per_seed.items()}})
        seconds[kind] = round(time.time() - t, 1)
    seconds["total"] = round(time.time() - start, 1)

    from rich.table import Table

    table = Table(title=f"evomerge demo --vlm{' --quick' if quick else ''}: greedy exact match %, "
                        f"test pictures (merges: mean of seeds {list(size['seeds'])})")
    for col in ("model", "kind", "l2_vqa", "l1_vqa"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["kind"], f"{r['l2_vqa']:.1f}", f"{r['l1_vqa']:.1f}")
    print_table(table)
    log("wall time (s): " + ", ".join(f"{k} {v}" for k, v in seconds.items()))
    results = {"rows": rows, "seconds": seconds, "seeds": list(size["seeds"]), "quick": quick,
               "vlm": str(llava), "configs": {k: str(v) for k, v in
                                              configs[size["seeds"][0]].items()}}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(rows, seconds, size["seeds"]))
    return results
