"""The `lm_eval:` section of an evolve task of type `lm_eval` (evolve/lm_eval_task.py): which
lm-evaluation-harness task supplies the docs, and how they split into fitness, validation and
test. Kept apart from config.py so that the config needs no lm-eval to load."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator


class SplitTasks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    fitness: str
    validation: str
    test: str


class LmEvalSection(BaseModel):
    """Either `task` (one lm-eval task whose docs are split: `split` fractions of a permutation
    drawn from `split_seed`) or `tasks` (one lm-eval task per split, all of its docs).
    `metric` and `filter` pick the fitness score (default: the task's first metric after its
    first filter; a metric where lower is better enters negated)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    task: str | None = None
    tasks: SplitTasks | None = None
    include_path: Path | None = None
    split: tuple[float, float, float] = (0.5, 0.25, 0.25)
    split_seed: int = 0
    metric: str | None = None
    filter: str | None = None

    @model_validator(mode="after")
    def _check(self):
        if (self.task is None) == (self.tasks is None):
            raise ValueError("lm_eval: give exactly one of task (its docs split) and tasks "
                             "(one task per split)")
        if self.tasks is not None and {"split", "split_seed"} & self.model_fields_set:
            raise ValueError("lm_eval.split applies to one task's docs (lm_eval.task), not "
                                 "to lm_eval.tasks")
        if not all(math.isfinite(f) and f > 0 for f in self.split) or not math.isclose(
                sum(self.split), 1.0, abs_tol=1e-6):
            raise ValueError(f"lm_eval.split: three positive fractions (fitness, validation, "
                             f"test) that sum to 1, got {list(self.split)}")
        return self

    def names(self) -> dict[str, str]:
        """split -> lm-eval task name."""
        if self.task is not None:
            return {s: self.task for s in ("fitness", "validation", "test")}
        return self.tasks.model_dump()
