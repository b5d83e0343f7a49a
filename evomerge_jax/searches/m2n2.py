"""`search: m2n2` (Sakana's M2N2, GECCO 2025) over PS genomes: an archive of `m2n2.archive_size`
merge recipes over the sources, bred by split-point crossover with resource competition and
attraction-based mate choice (maths in evolve/m2n2.py). Same sources, genome, population pass,
tasks, splits, plan, logs and export as PS: a child is a recipe, scored by the pass without a
model being materialised.

Generation 0 scores the archive: each source alone (when the genome has a per-source `weight`:
weight 1 on it, 0 on the others, every other gene at the strategy mean), the mean, and draws
around it (strategy sigma) to fill it. Each later generation breeds `m2n2.children` children (first
parent by shared fitness, second by attraction, w uniform in [0, 1], then gaussian mutation of
`m2n2.mutation_rate` of the genes by N(0, mutation_scale²)), scores them in one pass on the whole
fitness split (every example is a resource: each task's per-example scores times its weight), and
inserts them one by one, each replacing the archive's worst by shared fitness when it beats it.
Evaluations spent: archive_size + (generations − 1) · children.

Split points. `m2n2.split: layer` (default): a layer-group boundary drawn uniformly; the child is
a PS genome. `split: parameter`: a boundary gene drawn uniformly over the flattened model, so it
may fall inside a layer and inside a tensor; the child is a split recipe (ps/split_genome.py):
[w·A + (1 − w)·B | (1 − w)·A + w·B | boundary], where a parent that is itself a split recipe
enters as its projection (each group the parameter-weighted mean of its two sides). The pass
scores split recipes exactly (the cut tensor takes each element from its side); mutation moves
the two recipes' genes, not the boundary.

As PS, each generation's top weighted task sum is scored on validation and the best there is the
run's result (best.json, best/). Randomness: generation g draws from numpy's generator seeded
[seed, g]; merge keys are `candidate_keys(seed, g, i)`. Resume: `m2n2.json` (archive, its
per-example scores, the best) is rewritten atomically after every generation.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..evolve import m2n2
from ..evolve.config_sections import M2N2Section
from ..evolve.evaluate import combine
from ..evolve.loop import _summary, _truncate_log
from ..fileio import atomic_write_text
from ..parallel.distributed import barrier, is_main
from ..parallel.seeds import candidate_keys
from ..ps.genome import clip
from ..ps.search import ps_parts, ps_search_for
from ..ps.split_search import SplitSearch
from .own_loop import append_log, keep_best, load_state, save_state, validate_top
from .stage import build_mesh, check_mesh, finish, saved_plan, stage_evaluator, start_run_dir


@dataclass(frozen=True)
class M2N2Settings:
    archive_size: int
    children: int
    alpha: float
    generations: int
    seed: int
    mean: float
    sigma: float
    split: str = "layer"
    mutation_rate: float = 0.0
    mutation_scale: float = 0.0
    notes: tuple[str, ...] = ()

    @property
    def population_size(self) -> int:
        """Candidates per pass (the evaluator's chunking, `evomerge plan`)."""
        return max(self.archive_size, self.children)


def prepare_m2n2(cfg, log=print):
    """Every check of a `search: m2n2` config, no weights read: (search, tasks, tokenizer,
    settings)."""
    search, tasks, tokenizer = ps_parts(cfg)
    m, s = cfg.m2n2 or M2N2Section(), cfg.strategy
    if m.split == "parameter":
        search = SplitSearch(search)
    return search, tasks, tokenizer, M2N2Settings(
        m.archive_size, m.children, m.alpha, s.generations, s.seed, s.mean, s.sigma, m.split,
        m.mutation_rate, m.mutation_scale)


def m2n2_search_for(cfg):
    """The search of a `search: m2n2` config (split recipes under `m2n2.split: parameter`), no
    weights loaded (for export)."""
    search = ps_search_for(cfg)
    return SplitSearch(search) if (cfg.m2n2 or M2N2Section()).split == "parameter" else search


def initial_archive(search, settings: M2N2Settings) -> np.ndarray:
    """The sources alone (per-source `weight` genomes), the mean, then draws around it (split
    recipes: each of these on both sides)."""
    if isinstance(search, SplitSearch):
        plain = initial_archive(search.ps, settings)
        return np.stack([np.concatenate([g, g, np.zeros(1, np.float32)]) for g in plain])
    layout, mean = search.layout, search.initial_mean()
    rows = []
    if "weight" in layout.params and layout.per_source[layout.params.index("weight")]:
        for k in range(layout.num_sources):
            values = layout.to_values(mean)
            values["weight"] = np.zeros_like(values["weight"])
            values["weight"][:, k] = 1.0
            rows.append(layout.from_values(values))
    rows.append(mean)
    rng = np.random.default_rng([settings.seed, 0])
    while len(rows) < settings.archive_size:
        rows.append(mean + settings.sigma * rng.standard_normal(len(mean)))
    return clip(np.stack(rows[:settings.archive_size]))[0]


def breed(search, archive: dict, positions, settings: M2N2Settings, generation: int) -> np.ndarray:
    """`children` genomes from the archive by competition, attraction, crossover and
    mutation."""
    rng = np.random.default_rng([settings.seed, generation])
    fitness = m2n2.shared_fitness(archive["items"], settings.alpha)
    parameter = isinstance(search, SplitSearch)
    splits = None if parameter else int(positions.max()) + 1
    out = []
    for _ in range(settings.children):
        first = m2n2.draw(rng, fitness)
        second = m2n2.draw(rng, m2n2.attraction(archive["items"], first), exclude=first)
        a, b = archive["genomes"][first], archive["genomes"][second]
        if parameter:
            a, b = search.project(a), search.project(b)
            boundary, w = float(rng.uniform()), float(rng.uniform())
            genes = np.concatenate([w * a + (1 - w) * b, (1 - w) * a + w * b])
        else:
            split, w = int(rng.integers(0, splits + 1)), float(rng.uniform())
            genes = m2n2.crossover(a, b, positions, split, w)
        genes = m2n2.mutate(rng, genes, settings.mutation_rate, settings.mutation_scale)
        out.append(np.append(genes, boundary) if parameter else genes)
    return clip(np.stack(out))[0]


ARCHIVE_DTYPES = {"genomes": np.float32, "keys": np.uint32, "items": np.float64,
                  "total": np.float64, "born": np.int64}


def item_matrix(tasks, items: dict) -> np.ndarray:
    """{task: [P, n]} -> [P, J]: the examples of every weighted task, each times its weight."""
    return np.concatenate([t.cfg.weight * np.asarray(items[t.name], np.float64)
                           for t in tasks if t.cfg.weight != 0], axis=1)


def run_m2n2(cfg, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
             log=print, devices=None, on_generation=None, export: bool = True) -> dict:
    """The registry's runner of `search: m2n2`; returns results.json's content (with its "m2n2"
    entry: the final archive's recipes and scores)."""
    del progress  # one log line per generation instead of a bar
    check_mesh(cfg)
    search, tasks, tokenizer, settings = prepare_m2n2(cfg, log)
    plan = saved_plan(cfg, resume)
    mesh = build_mesh(cfg, search, devices, log)
    run_dir = start_run_dir(cfg, resume, overwrite)
    search.load(mesh)
    evaluator = stage_evaluator(cfg, search, tasks, tokenizer, settings.population_size, mesh,
                                plan, log)
    positions = None if isinstance(search, SplitSearch) else m2n2.gene_positions(search.layout)
    log(f"m2n2: archive {settings.archive_size}, {settings.children} children per generation, "
        f"alpha {settings.alpha}, split at a {settings.split} boundary, mutation "
        f"{settings.mutation_rate} x N(0, {settings.mutation_scale}^2); {search.num_dims} genes, "
        f"{settings.generations} generations")
    start, archive, best = 0, None, None
    if resume and (run_dir / "m2n2.json").is_file():
        start, archive, best = load_state(run_dir / "m2n2.json", ARCHIVE_DTYPES)
        log(f"resuming at generation {start} of {settings.generations}")
    _truncate_log(run_dir / "log.jsonl", start)
    for generation in range(start, settings.generations):
        began = time.perf_counter()
        genomes = initial_archive(search, settings) if archive is None else breed(
            search, archive, positions, settings, generation)
        keys = candidate_keys(settings.seed, generation, range(len(genomes)))
        scores, per_task = evaluator.split_items(genomes, keys, "fitness")
        items, total = item_matrix(tasks, per_task), combine(tasks, scores)
        replaced = 0
        if archive is None:
            archive = {"genomes": genomes, "keys": keys, "items": items, "total": total,
                       "born": np.full(len(genomes), generation)}
        else:
            for i in range(len(genomes)):
                worst = m2n2.replace_worst(archive["items"], items[i], settings.alpha)
                if worst is not None:
                    replaced += 1
                    for name, value in (("genomes", genomes[i]), ("keys", keys[i]),
                                        ("items", items[i]), ("total", total[i]),
                                        ("born", generation)):
                        archive[name][worst] = value
        top, val_score = validate_top(evaluator, tasks, genomes, keys, total)
        best = keep_best(best, run_dir, val_score, generation, top, total[top], genomes[top],
                         keys[top])
        line = _log_line(generation, began, genomes, total, scores, archive, settings, replaced,
                         top, val_score, best)
        append_log(run_dir, line)
        save_state(run_dir / "m2n2.json", generation + 1, archive, best)
        log(f"generation {generation}: best {line['fitness']['best']:.4f}, archive best "
            f"{line['archive']['fitness']['best']:.4f}, {replaced} replaced")
        if on_generation is not None:
            on_generation(generation, line)
    if best is None:
        raise ConfigError(f"{run_dir}: no candidate had a finite validation score")
    results = finish(cfg, search, evaluator, tasks, tokenizer, best, run_dir, log=log,
                     export=export)
    results["m2n2"] = {"evaluations": settings.archive_size
                       + (settings.generations - 1) * settings.children,
                       "archive": [{"generation": int(b), "fitness": float(t),
                                    "recipe": search.describe(g)}
                                   for g, t, b in zip(archive["genomes"], archive["total"],
                                                      archive["born"])]}
    if is_main():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    barrier(f"m2n2 written {run_dir}")
    return results


def _log_line(generation, began, genomes, total, scores, archive, settings, replaced, top,
              val_score, best) -> dict:
    shared = m2n2.shared_fitness(archive["items"], settings.alpha)
    return {
        "generation": generation, "seconds": round(time.perf_counter() - began, 4),
        "population": len(genomes), "fitness": _summary(total),
        "tasks": {name: {m: _summary(np.asarray(v, np.float64)) for m, v in s.items()}
                  for name, s in scores.items()},
        "archive": {"fitness": _summary(archive["total"]), "shared": _summary(shared),
                    "replaced": replaced},
        "generation_best": {"candidate": top, "fitness": float(total[top]),
                            "validation": val_score, "genome": genomes[top].tolist()},
        "best_so_far": None if best is None else {
            "generation": best.generation, "candidate": best.candidate,
            "validation": best.validation},
    }
