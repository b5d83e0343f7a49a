"""Multi-objective search (`search: pareto`): NSGA-II over PS genomes, one objective per task named
in `objectives` (each task's primary score, maximised). Same sources, genome, population pass,
tasks, splits, plan, logs and export as PS; the run keeps a population of `population_size`
(mu + lambda: parents and children compete, evolve/pareto.py), and at the end scores the final
population's front on validation, keeps the points no other point beats there (the front chosen on
validation), scores them on test and writes `pareto.json` and `pareto.png`.

Alongside the front, the run keeps a single best as PS does (the generation's top weighted task sum
scored on validation, `best.json`, exported to `best/`), so `evomerge export RUN OUT` works as for
any run, and `evomerge export RUN OUT --point K` exports point K of the front.

Randomness: generation g's children come from keys `fold_in(seed stream, g)`; their merge keys
are `candidate_keys(seed, g, i)`. Resume: `population.json` (the population, its objective scores,
the best so far) is rewritten atomically after every generation, so a resumed run replays the
remaining generations as the uninterrupted one would have.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from ..errors import ConfigError
from ..evolve import pareto
from ..evolve.evaluate import combine
from ..evolve.loop import _summary, _truncate_log
from ..fileio import atomic_write_text
from ..parallel.distributed import barrier, is_main
from ..parallel.seeds import STRATEGY_STREAM, candidate_keys
from ..ps.genome import clip
from ..ps.search import ps_parts
from .pareto_files import plot_pareto, write_front
from .own_loop import append_log, keep_best, load_state, save_state, validate_top
from .stage import build_mesh, check_mesh, finish, saved_plan, stage_evaluator, start_run_dir


@dataclass(frozen=True)
class NSGA2:
    """The settings NSGA-II takes from the strategy section (its name does not apply)."""

    population_size: int
    generations: int
    seed: int
    mean: float
    sigma: float
    notes: tuple[str, ...] = ()


def prepare_pareto(cfg, log=print):
    """Every check of a `search: pareto` config, no weights read: (search, tasks, tokenizer,
    NSGA2 settings)."""
    search, tasks, tokenizer = ps_parts(cfg)
    s = cfg.strategy
    return search, tasks, tokenizer, NSGA2(s.population_for(search.num_dims), s.generations,
                                           s.seed, s.mean, s.sigma)


def _key(seed: int, generation: int):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STRATEGY_STREAM),
                              generation + 1)


def _initial(search, nsga: NSGA2) -> np.ndarray:
    """Generation 0: the mean and draws around it with the strategy's sigma, clipped."""
    mean = search.initial_mean()
    noise = np.asarray(jax.random.normal(_key(nsga.seed, 0), (nsga.population_size, len(mean))))
    genomes = mean[None] + nsga.sigma * noise
    genomes[0] = mean
    return clip(genomes)[0]


def _children(population: dict, nsga: NSGA2, generation: int) -> np.ndarray:
    f = pareto.finite(population["objectives"])
    rank = pareto.ranks(f)
    dist = pareto.crowding(f, rank)
    k_pick, k_vary = jax.random.split(_key(nsga.seed, generation))
    count = nsga.population_size + nsga.population_size % 2
    parents = np.asarray(population["genomes"])[np.asarray(
        pareto.tournament(k_pick, rank, dist, count))]
    return np.asarray(pareto.vary(k_vary, parents), np.float32)[:nsga.population_size]


class _Scorer:
    """Objective scores [N, M] and weighted sums [N] of genomes on generation g's fitness rows."""

    def __init__(self, evaluator, tasks, objectives, seed: int):
        self.evaluator, self.tasks, self.seed = evaluator, tasks, seed
        self.objectives = list(objectives)
        # A fitness split no larger than its batch is scored whole every generation: parents'
        # scores stay comparable with their children's and need no rescoring.
        self.fixed_rows = all(t.splits["fitness"].size <= t.cfg.batch_size for t in tasks)

    def __call__(self, genomes, keys, generation: int):
        rows = [t.fitness_rows(self.seed, i, generation) for i, t in enumerate(self.tasks)]
        scores = self.evaluator.fitness_scores(genomes, keys, rows)
        return objective_matrix(scores, self.objectives), combine(self.tasks, scores), scores


def objective_matrix(scores: dict, objectives) -> np.ndarray:
    return np.stack([np.asarray(scores[o]["score"], np.float64) for o in objectives], axis=1)


POPULATION_DTYPES = {"genomes": np.float32, "keys": np.uint32, "objectives": np.float64,
                     "born": np.int64}


def run_pareto(cfg, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
               log=print, devices=None, on_generation=None, export: bool = True) -> dict:
    """The registry's runner of `search: pareto`; returns results.json's content (with its
    "pareto" entry: the front chosen on validation)."""
    del progress  # one log line per generation instead of a bar
    check_mesh(cfg)
    search, tasks, tokenizer, nsga = prepare_pareto(cfg, log)
    plan = saved_plan(cfg, resume)
    mesh = build_mesh(cfg, search, devices, log)
    run_dir = start_run_dir(cfg, resume, overwrite)
    search.load(mesh)
    # children and (when rescored) parents are scored population_size at a time, as `evomerge
    # plan` plans
    evaluator = stage_evaluator(cfg, search, tasks, tokenizer, nsga.population_size, mesh, plan,
                                log)
    score = _Scorer(evaluator, tasks, cfg.objectives, nsga.seed)
    log(f"pareto: NSGA-II on {', '.join(cfg.objectives)}; {search.num_dims} genes, population "
        f"{nsga.population_size}, {nsga.generations} generations")
    start, population, best = 0, None, None
    if resume and (run_dir / "population.json").is_file():
        start, population, best = load_state(run_dir / "population.json", POPULATION_DTYPES)
        log(f"resuming at generation {start} of {nsga.generations}")
    _truncate_log(run_dir / "log.jsonl", start)
    for generation in range(start, nsga.generations):
        began = time.perf_counter()
        size = nsga.population_size
        genomes = _initial(search, nsga) if population is None else _children(
            population, nsga, generation)
        keys = candidate_keys(nsga.seed, generation, range(size))
        objectives, total, scores = score(genomes, keys, generation)
        if population is None:
            population = {"genomes": genomes, "keys": keys, "objectives": objectives,
                          "born": np.full(size, generation)}
        else:
            if not score.fixed_rows:  # parents rescored on this generation's minibatch
                population["objectives"] = score(population["genomes"], population["keys"],
                                                 generation)[0]
            union = {"genomes": np.concatenate([population["genomes"], genomes]),
                     "keys": np.concatenate([population["keys"], keys]),
                     "objectives": np.concatenate([population["objectives"], objectives]),
                     "born": np.concatenate([population["born"], np.full(size, generation)])}
            keep = pareto.select(union["objectives"], size)
            population = {k: v[keep] for k, v in union.items()}
        top, val_score = validate_top(evaluator, tasks, genomes, keys, total)
        best = keep_best(best, run_dir, val_score, generation, top, total[top], genomes[top],
                         keys[top])
        line = _log_line(generation, began, genomes, total, scores, population, cfg.objectives,
                         top, val_score, best)
        append_log(run_dir, line)
        save_state(run_dir / "population.json", generation + 1, population, best)
        log(f"generation {generation}: front of {line['front_size']}, "
            + ", ".join(f"{o} best {line['objectives'][o]['best']:.4f}" for o in cfg.objectives))
        if on_generation is not None:
            on_generation(generation, line)
    if best is None:
        raise ConfigError(f"{run_dir}: no candidate had a finite validation score")
    results = finish(cfg, search, evaluator, tasks, tokenizer, best, run_dir, log=log,
                     export=export)
    points = choose_front(search, evaluator, cfg.objectives, population)
    results["pareto"] = {"objectives": list(cfg.objectives), "points": points}
    if is_main():
        write_front(run_dir, cfg.objectives, points)
        plot_pareto(cfg.objectives, points, run_dir / "pareto.png")
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    barrier(f"pareto written {run_dir}")
    return results


def _log_line(generation, began, genomes, total, scores, population, objectives, top, val_score,
              best) -> dict:
    objs = population["objectives"]
    return {
        "generation": generation, "seconds": round(time.perf_counter() - began, 4),
        "population": len(genomes), "fitness": _summary(total),
        "tasks": {name: {m: _summary(np.asarray(v, np.float64)) for m, v in s.items()}
                  for name, s in scores.items()},
        "front_size": int(len(pareto.front(objs))),
        "objectives": {o: _summary(objs[:, i]) for i, o in enumerate(objectives)},
        "generation_best": {"candidate": top, "fitness": float(total[top]),
                            "validation": val_score, "genome": genomes[top].tolist()},
        "best_so_far": None if best is None else {
            "generation": best.generation, "candidate": best.candidate,
            "validation": best.validation},
    }


def choose_front(search, evaluator, objectives, population: dict) -> list[dict]:
    """The final population's front (on fitness) scored on validation; the points that stay
    non-dominated there, scored on test, ordered by the first objective's validation score."""
    on_fitness = pareto.front(population["objectives"])
    genomes, keys = population["genomes"][on_fitness], population["keys"][on_fitness]
    val = evaluator.split_scores(genomes, keys, "validation")
    keep = pareto.front(objective_matrix(val, objectives))
    keep = keep[np.argsort(objective_matrix(val, objectives)[keep, 0], kind="stable")]
    test = evaluator.split_scores(genomes[keep], keys[keep], "test")
    f_val, f_test = objective_matrix(val, objectives), objective_matrix(test, objectives)
    points = []
    for k, i in enumerate(keep):
        j = on_fitness[i]
        points.append({
            "point": k, "generation": int(population["born"][j]),
            "fitness": dict(zip(objectives, population["objectives"][j].tolist())),
            "validation": dict(zip(objectives, f_val[i].tolist())),
            "test": dict(zip(objectives, f_test[k].tolist())),
            "genome": genomes[i].tolist(), "key": keys[i].tolist(),
            "recipe": search.describe(genomes[i])})
    return points


def export_point(run_dir, point: int, search_for, out_dir, *, overwrite: bool = False,
                 log=print) -> Path:
    """`evomerge export RUN OUT --point K`: point K of the run's front (pareto.json)."""
    from ..evolve.config import load_config

    run_dir = Path(run_dir)
    path = run_dir / "pareto.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no Pareto front (pareto.json) to export a point from; "
                          "--point applies to a finished search: pareto run")
    points = json.loads(path.read_text())["points"]
    if not 0 <= point < len(points):
        raise ConfigError(f"{path}: --point {point} is out of range; the front has points "
                          f"0..{len(points) - 1}")
    entry = points[point]
    search = search_for(load_config(run_dir / "config.yml"))
    note = (f"Pareto point {point}, generation {entry['generation']}, validation "
            + ", ".join(f"{k} {v:.6g}" for k, v in entry["validation"].items()))
    out = search.export(entry["genome"], entry["key"], out_dir, overwrite=overwrite, note=note)
    log(f"wrote {out} (dtype {search.dtype})")
    return out
