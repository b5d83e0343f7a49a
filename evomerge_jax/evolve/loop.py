"""The evolution loop, generic over the search space: evosax ask/tell, a seeded fitness minibatch
per generation, the generation's best candidate scored on the validation split (the run's best is
chosen on validation, as the paper did), a JSONL line and an orbax checkpoint per generation.

A search space plugs in through the `Search` protocol: PS (merge parameters) now, DFS (a layer path)
later, with the same tasks, splits, strategies, checkpoints, logs and progress.

Resume. Every random draw is keyed by (seed, generation): the strategy's ask/tell keys, the fitness
minibatch, the candidates' merge keys. The checkpoint holds the strategy state and the best so far;
a run restarted from the checkpoint of generation g therefore replays generations g+1.. exactly as
the uninterrupted run did (same machine, same compiled code).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import jax
import numpy as np
import orbax.checkpoint as ocp
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..fileio import atomic_write_text
from ..parallel.distributed import is_main
from ..parallel.seeds import candidate_keys
from .evaluate import combine
from .strategy import Strategy, losses


class Search(Protocol):
    """A search space: genomes of `num_dims` genes, scored through a population model.

    `model` implements the population-model interface of `population.py` (candidates, hidden,
    head_map, generate, memory) over the device pytree `weights` (set by `load`, which places
    them on a mesh; `weight_layout` gives their spec and shapes beforehand); `clip` maps raw
    strategy samples into the genome's domain and counts the genes it moved; `describe` is the
    JSON recipe of one genome (logs, results, heatmap: {"groups", "sources", "values"});
    `export` writes one candidate (genome and merge key) as a Hugging Face dir.
    """

    kind: str
    model: object
    weights: object

    @property
    def num_dims(self) -> int: ...
    def weight_layout(self) -> tuple: ...
    def load(self, mesh=None) -> "Search": ...
    def initial_mean(self) -> np.ndarray: ...
    def clip(self, genomes: np.ndarray) -> tuple[np.ndarray, int]: ...
    def describe(self, genome: np.ndarray) -> dict: ...
    def export(self, genome, key_data, out_dir, *, overwrite: bool = False, note: str = ""): ...


@dataclass
class Best:
    """The best candidate so far, chosen on the validation split."""

    generation: int
    candidate: int
    validation: float
    fitness: float
    genome: list
    key: list

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self)) + "\n")

    @classmethod
    def read(cls, path: Path) -> "Best":
        return cls(**json.loads(Path(path).read_text()))

    def note(self) -> str:
        """Where it came from, for the exported recipe."""
        return (f"generation {self.generation}, candidate {self.candidate}, validation score "
                f"{self.validation:.6g}")


def _summary(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return {"best": None, "mean": None}
    return {"best": float(finite.max()), "mean": float(finite.mean())}


def _manager(directory: Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.resolve(), options=options)


def _template(strategy: Strategy, seed: int, mean: np.ndarray):
    """A state with the structure (and dtypes) of a saved one, for orbax's restore."""
    state = strategy.init(seed, mean)
    population, state = strategy.ask(seed, 0, state, mean)
    state = strategy.tell(seed, 0, state, population, np.zeros(len(population), np.float32))
    return _host(state)


def _host(state):
    """The strategy state as numpy: every process holds the same copy, and orbax saves numpy
    leaves from the primary process alone (device arrays would be one per process)."""
    return jax.tree.map(np.asarray, state)


def _truncate_log(path: Path, next_generation: int) -> None:
    if not is_main() or not path.exists():
        return
    keep = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["generation"] < next_generation]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def run_search(search: Search, strategy: Strategy, evaluator, tasks, scfg, run_dir: Path, *,
               resume: bool = False, progress: bool = True, log: Callable = print,
               on_generation: Callable | None = None) -> Best:
    """Evolve for `scfg.generations` generations (scfg: the strategy section); returns the best."""
    seed, generations = scfg.seed, scfg.generations
    mean = search.initial_mean()
    log_path, best_path = run_dir / "log.jsonl", run_dir / "best.json"
    manager = _manager(run_dir / "checkpoints")
    state, best, start = strategy.init(seed, mean), None, 0
    if resume and manager.latest_step() is not None:
        step = manager.latest_step()
        template = {"state": _template(strategy, seed, mean)}
        restored = manager.restore(step, args=ocp.args.Composite(
            tree=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore()))
        state, start = restored.tree["state"], restored.meta["next_generation"]
        best = Best(**restored.meta["best"]) if restored.meta["best"] else None
        log(f"resuming at generation {start} of {generations}")
    _truncate_log(log_path, start)
    bar = _progress(progress, generations, start)
    for generation in range(start, generations):
        began = time.perf_counter()
        population, asked = strategy.ask(seed, generation, state, mean)
        genomes, clipped = search.clip(population)
        genes_ok = np.isfinite(population).all(axis=1)
        keys = candidate_keys(seed, generation, range(len(population)))
        rows = [t.fitness_rows(seed, i, generation) for i, t in enumerate(tasks)]
        scores = evaluator.fitness_scores(genomes, keys, rows)
        total = np.where(genes_ok, combine(tasks, scores), np.nan)
        loss, bad = losses(total, genes_ok)
        state = strategy.tell(seed, generation, asked, population, loss)
        top = int(np.argmin(loss))
        val = evaluator.split_scores(genomes[top:top + 1], keys[top:top + 1], "validation")
        val_score = float(combine(tasks, val)[0])
        if np.isfinite(val_score) and (best is None or val_score > best.validation):
            best = Best(generation, top, val_score, float(total[top]),
                        genomes[top].tolist(), keys[top].tolist())
            if is_main():
                best.save(best_path)
        if bad:
            log(f"warning: generation {generation}: {bad} candidate(s) with non-finite fitness "
                "ranked last")
        line = {
            "generation": generation, "seconds": round(time.perf_counter() - began, 4),
            "population": len(population), "fitness": _summary(total),
            "tasks": {name: {m: _summary(np.asarray(v, np.float64)) for m, v in s.items()}
                      for name, s in scores.items()},
            "non_finite": bad, "clipped": clipped, "clipped_fraction": clipped / genomes.size,
            "generation_best": {"candidate": top, "fitness": float(total[top]),
                                "validation": val_score, "genome": genomes[top].tolist(),
                                "validation_tasks": {n: {m: float(v[0]) for m, v in s.items()}
                                                     for n, s in val.items()}},
            "best_so_far": None if best is None else {
                "generation": best.generation, "candidate": best.candidate,
                "validation": best.validation},
        }
        if is_main():
            with log_path.open("a") as handle:
                handle.write(json.dumps(line) + "\n")
        manager.save(generation, args=ocp.args.Composite(  # every process takes part
            tree=ocp.args.StandardSave({"state": _host(state)}),
            meta=ocp.args.JsonSave({"next_generation": generation + 1,
                                    "best": None if best is None else asdict(best)})))
        bar.update(generation, line)
        if on_generation is not None:
            on_generation(generation, line)
    manager.wait_until_finished()
    manager.close()
    bar.close()
    if best is None:
        best = Best.read(best_path) if best_path.exists() else None
    return best


class _progress:
    """A rich progress bar: generation, best and mean fitness, validation of the best so far."""

    def __init__(self, enabled: bool, total: int, start: int):
        self.bar = None
        if not enabled:
            return
        self.bar = Progress(TextColumn("gen"), MofNCompleteColumn(), BarColumn(),
                            TextColumn("{task.fields[info]}"), TimeRemainingColumn())
        self.task = self.bar.add_task("evolve", total=total, completed=start, info="")
        self.bar.start()

    def update(self, generation: int, line: dict) -> None:
        if self.bar is None:
            return
        fit = line["fitness"]
        fmt = lambda v: "nan" if v is None else f"{v:.4f}"  # noqa: E731
        best = line["best_so_far"]
        info = (f"best {fmt(fit['best'])}  mean {fmt(fit['mean'])}  "
                f"val(best so far) {fmt(best and best['validation'])}")
        self.bar.update(self.task, completed=generation + 1, info=info)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
