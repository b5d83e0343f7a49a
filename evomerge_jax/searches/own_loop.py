"""What the searches that run a loop of their own (pareto, m2n2, gradient; PS, DFS and PS+DFS
run `evolve.loop`) share: the resume state of a population of arrays, the run's best chosen on
validation, and the log's lines."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..evolve.evaluate import combine
from ..evolve.loop import Best
from ..fileio import atomic_write_text
from ..parallel.distributed import is_main


def save_state(path: Path, next_generation: int, arrays: dict, best: Best | None) -> None:
    """The population's arrays, the best so far and where to resume, written atomically."""
    if is_main():
        state = {"next_generation": next_generation,
                 **{k: np.asarray(v).tolist() for k, v in arrays.items()},
                 "best": None if best is None else asdict(best)}
        atomic_write_text(path, json.dumps(state) + "\n")


def load_state(path: Path, dtypes: dict) -> tuple[int, dict, Best | None]:
    """(next generation, {name: array of dtypes[name]}, best) from `save_state`'s file."""
    state = json.loads(path.read_text())
    arrays = {name: np.asarray(state[name], dtype) for name, dtype in dtypes.items()}
    best = Best(**state["best"]) if state["best"] else None
    return state["next_generation"], arrays, best


def validate_top(evaluator, tasks, genomes, keys, total) -> tuple[int, float]:
    """The candidate with the best finite fitness `total`, and its validation score."""
    top = int(np.nanargmax(np.where(np.isfinite(total), total, -np.inf)))
    val = evaluator.split_scores(genomes[top:top + 1], keys[top:top + 1], "validation")
    return top, float(combine(tasks, val)[0])


def keep_best(best: Best | None, run_dir: Path, validation: float, generation: int,
              candidate: int, fitness: float, genome, key) -> Best | None:
    """`best`, or the new candidate when its validation score is finite and higher (then saved
    to best.json)."""
    if not np.isfinite(validation) or (best is not None and validation <= best.validation):
        return best
    best = Best(generation, candidate, validation, float(fitness), np.asarray(genome).tolist(),
                np.asarray(key).tolist())
    if is_main():
        best.save(run_dir / "best.json")
    return best


def append_log(run_dir: Path, line: dict) -> None:
    if is_main():
        with (run_dir / "log.jsonl").open("a") as handle:
            handle.write(json.dumps(line) + "\n")
