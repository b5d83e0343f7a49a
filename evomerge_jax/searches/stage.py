"""One stage of a search run, whatever the search: the run dir (checked on every process, written
by process 0), the device mesh, the evaluator, the generation loop (`evolve/loop.py`), then the
best scored on validation and test, exported and tabulated. Multi-stage searches (`ps_dfs.py`)
chain stages; `run.py` picks the stage runner from the registry.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import yaml

from ..errors import ConfigError
from ..evolve.config import EvolveConfig, dump_config, load_config
from ..evolve.evaluate import Evaluator, PlainModel, available_memory
from ..evolve.loop import Best, run_search
from ..evolve.report import plot_fitness, plot_recipe, print_table, read_log, score_table
from ..fileio import atomic_write_text
from ..parallel.distributed import agree, barrier, is_main
from ..parallel.mesh import device_bytes, make_mesh, mesh_sizes
from ..sources import load_source


def check_mesh(cfg: EvolveConfig) -> None:
    """Explicit mesh sizes must use every device: checked before anything is written."""
    if cfg.compute.mesh != "auto":
        mesh_sizes(cfg.compute.mesh, jax.device_count(), lambda m: 0, 0)


def _first(scores: dict) -> dict:
    """{task: {metric: [P]}} -> {task: {metric: float}} for the first candidate."""
    return {t: {m: float(np.asarray(v)[0]) for m, v in s.items()} for t, s in scores.items()}


def _check_run_dir(cfg: EvolveConfig, resume: bool, overwrite: bool) -> tuple[Path, bool]:
    """(run dir, whether to wipe it first); reads only, so that every process can check."""
    run_dir = Path(cfg.output_dir)
    saved = run_dir / "config.yml"
    if resume:
        if not saved.is_file():
            raise ConfigError(f"{run_dir}: no run to resume (no config.yml); start it without "
                              "--resume")
        old = yaml.safe_load(saved.read_text())
        new = yaml.safe_load(dump_config(cfg))
        old["strategy"].pop("generations"), new["strategy"].pop("generations")
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise ConfigError(f"{run_dir}: the config differs from the run's saved config.yml in "
                              f"{', '.join(changed)}; only strategy.generations may change on resume")
        return run_dir, False
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise ConfigError(f"{run_dir}: output_dir already holds a run; pass --resume to "
                              "continue it or --overwrite to start over")
        return run_dir, True
    return run_dir, False


def start_run_dir(cfg: EvolveConfig, resume: bool, overwrite: bool) -> Path:
    """Check the run dir on every process, then (process 0) wipe it if asked, create it and save
    the config; every process returns once the dir is ready."""
    barrier("run dir: before the checks")  # no process has touched the dir yet
    run_dir, wipe = _check_run_dir(cfg, resume, overwrite)
    barrier("run dir: checked")
    if is_main():
        if wipe:
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yml", dump_config(cfg))
    barrier("run dir: ready")
    return run_dir


def build_mesh(cfg: EvolveConfig, search, devices=None, log=print):
    """The (pop, model) mesh over `devices` (default: every process's devices) from
    `compute.mesh`; under `auto` the weights' size picks the model axis (mesh.mesh_sizes)."""
    devices = list(devices or jax.devices())
    spec, shapes = search.weight_layout()
    pop, model = mesh_sizes(cfg.compute.mesh, len(devices),
                            lambda m: device_bytes(spec, shapes, m),
                            available_memory(jax.local_devices()[0]), log)
    pop, model = agree((pop, model))
    return make_mesh(devices, pop, model)


def evolve_stage(cfg: EvolveConfig, prepare, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, log=print, devices=None, on_generation=None,
                 export: bool = True) -> dict:
    """Run one stage (a single-stage search) of a loaded config: `prepare(cfg, log)` (its registry
    entry's) checks everything before any weight is read; then search, score, export."""
    check_mesh(cfg)
    search, tasks, tokenizer, strategy = prepare(cfg, log)
    plan = saved_plan(cfg, resume)
    mesh = build_mesh(cfg, search, devices, log)
    run_dir = start_run_dir(cfg, resume, overwrite)
    for note in strategy.notes:
        log(f"note: {note}")
    search.load(mesh)
    population = strategy.algo.population_size
    evaluator = stage_evaluator(cfg, search, tasks, tokenizer, population, mesh, plan, log)
    pop, model = mesh.devices.shape
    log(f"{cfg.search}: {search.num_dims} genes, population {population}, "
        f"{cfg.strategy.generations} generations of {cfg.strategy.name}; {mesh.devices.size} "
        f"device(s) as a {pop} x {model} (pop x model) mesh, {evaluator.chunk} candidates per "
        "call" + (f"; generation: {evaluator.generation}" if evaluator.generation else ""))
    best = run_search(search, strategy, evaluator, tasks, cfg.strategy, run_dir, resume=resume,
                      progress=progress, log=log, on_generation=on_generation)
    return finish(cfg, search, evaluator, tasks, tokenizer, best, run_dir, log=log, export=export)


def stage_evaluator(cfg, search, tasks, tokenizer, population: int, mesh, plan: dict,
                    log=print) -> Evaluator:
    """The evaluator of a stage, chunked for `population` candidates (or as `plan`, the saved
    plan.json of a resumed run, says), with the plan saved in the run dir."""
    evaluator = Evaluator(search.model, search.weights, tasks, tokenizer, population=population,
                          memory_budget=cfg.compute.memory_budget,
                          chunk_size=plan.get("chunk_size", cfg.compute.chunk_size),
                          global_batch=plan.get("global_batch"), mesh=mesh, log=log,
                          generation=plan.get("generation") or cfg.compute.generation,
                          vision=getattr(search, "vision", None))
    # Every process runs the same programs: process 0's plan (from its free memory) wins.
    cached = evaluator.generation == "cached"
    evaluator.chunk, evaluator.global_batch, cached = agree(
        (evaluator.chunk, evaluator.global_batch, cached))
    if evaluator.generation:
        evaluator.use_generation("cached" if cached else "remerge")
    # A resumed run reuses the chunking, so that it runs the very programs the first one ran.
    if is_main():
        atomic_write_text(Path(cfg.output_dir) / "plan.json",
                          json.dumps({"chunk_size": evaluator.chunk,
                                      "global_batch": evaluator.global_batch,
                                      "generation": evaluator.generation}) + "\n")
    return evaluator


def saved_plan(cfg, resume: bool) -> dict:
    """A resumed run's plan.json (its chunking), else {}."""
    path = Path(cfg.output_dir) / "plan.json"
    return json.loads(path.read_text()) if resume and path.is_file() else {}


def finish(cfg, search, evaluator, tasks, tokenizer, best: Best, run_dir: Path, *, log=print,
           export: bool = True) -> dict:
    """Score the best on validation and test, export it, score the baselines, plot, tabulate.
    Every process scores the best (a collective pass); process 0 alone does the rest, and every
    process returns once the results are written."""
    genome, key = np.asarray([best.genome], np.float32), np.asarray([best.key], np.uint32)
    rows = {"evolved": {split: _first(evaluator.split_scores(genome, key, split))
                        for split in ("validation", "test")}}
    results = {"best": {"generation": best.generation, "candidate": best.candidate,
                        "validation_score": best.validation, "fitness_score": best.fitness,
                        "recipe": search.describe(best.genome)},
               "scores": rows}
    if is_main():
        if export:
            search.export(best.genome, best.key, run_dir / "best", overwrite=True,
                          note=best.note())
        if cfg.baselines:
            for label, path in [("base", cfg.base_model),
                                *[(Path(m).name, m) for m in cfg.models]]:
                rows[f"source {label}" if label != "base" else "base"] = score_model(
                    path, tasks, tokenizer, ("validation", "test"), cfg.compute.dtype, log,
                    vision=getattr(search, "vision", None))
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        plot_fitness(read_log(run_dir / "log.jsonl"), run_dir / "fitness.png")
        plot_recipe(results["best"]["recipe"], run_dir / "recipe.png")
        print_table(score_table(rows, title=f"{run_dir.name}: best of generation "
                                            f"{best.generation}"))
    barrier(f"finished {run_dir}")
    return results


def score_model(model_dir, tasks, tokenizer, splits, dtype=None, log=print, vision=None) -> dict:
    """One model dir on the tasks' splits: {split: {task: {metric: float}}}. With `vision` (a
    VLM run), the model is the language tower behind the VLM's frozen vision side (a VLM dir:
    its own language tower)."""
    ckpt = load_source(model_dir, dtype)  # a VLM dir: its language tower
    # A plain model is one candidate: one device, no replication.
    evaluator = Evaluator(PlainModel(ckpt.spec), ckpt.params, tasks, tokenizer,
                          devices=jax.local_devices()[:1], log=log, vision=vision)
    zeros_g, zeros_k = np.zeros((1, 1), np.float32), np.zeros((1, 2), np.uint32)
    return {split: _first(evaluator.split_scores(zeros_g, zeros_k, split)) for split in splits}


def export_stage(run_dir, search_for, out_dir, *, overwrite: bool = False, log=print) -> Path:
    """The best candidate of one stage's run dir (finished or not) as an HF dir; `search_for`
    builds the stage's search from its saved config without loading weights."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yml")
    if not (run_dir / "best.json").is_file():
        raise ConfigError(f"{run_dir}: the run has no best candidate yet (no best.json)")
    best = Best.read(run_dir / "best.json")
    search = search_for(cfg)
    out = search.export(best.genome, best.key, out_dir, overwrite=overwrite, note=best.note())
    log(f"wrote {out} (dtype {search.dtype})")
    return out
