"""A loaded task's data: its splits as fixed-shape arrays (row layouts: tasks.py) and how they
are cut into batches. No config or registry import, so task types (lm_eval_task.py) can build
them too."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

SPLITS = ("fitness", "validation", "test")
_PAD_MULTIPLE = 8  # pad lengths up to a multiple of this: fewer distinct compiled shapes


@dataclass(frozen=True)
class SplitData:
    arrays: dict            # name -> np.ndarray with N (examples) first
    answers: tuple = ()     # generate: the target text of each example
    files: tuple = ()       # (path, line) of each example, for error messages

    @property
    def size(self) -> int:
        return len(next(iter(self.arrays.values())))


@dataclass(frozen=True)
class TaskData:
    cfg: Any  # the task's config.TaskSection (not imported: config imports the task types)
    splits: dict = field(default_factory=dict)   # split -> SplitData
    seq_len: int = 0
    eos_id: int | None = None
    pad_id: int = 0
    generates: bool = False  # the pass decodes new tokens (else one teacher-forced forward)
    new_tokens: int = 0      # tokens the pass decodes per row (0: a teacher-forced task)
    eos_ids: tuple = ()      # the ids that end a generation
    lm: object = None        # lm_eval tasks: what their host side needs (lm_eval_task.py)

    @property
    def name(self) -> str:
        return self.cfg.name

    def fitness_rows(self, seed: int, task_index: int, generation: int) -> np.ndarray:
        """The seeded minibatch of generation `generation`: example indices [batch_size] (all
        examples, in order, when the split is smaller than the batch; padded with -1)."""
        n, size = self.splits["fitness"].size, self.cfg.batch_size
        if n <= size:
            return np.concatenate([np.arange(n), np.full(size - n, -1)])
        rng = np.random.default_rng([seed, task_index, generation])
        return np.sort(rng.choice(n, size, replace=False))

    def eval_chunks(self, split: str) -> list[np.ndarray]:
        """Example indices of a whole split in chunks of batch_size (the last padded with -1)."""
        n, size = self.splits[split].size, self.cfg.batch_size
        idx = np.concatenate([np.arange(n), np.full(-n % size, -1)])
        return [idx[i:i + size] for i in range(0, len(idx), size)]

    def batch(self, split: str, rows: np.ndarray) -> dict:
        """Arrays for the examples `rows` (-1: padding, scored as invalid)."""
        data = self.splits[split]
        take = np.where(rows < 0, 0, rows)
        out = {name: arr[take] for name, arr in data.arrays.items()}
        out["valid"] = out["valid"] & (rows >= 0).reshape((-1,) + (1,) * (out["valid"].ndim - 1))
        return out


def pad_to(length: int) -> int:
    return -(-length // _PAD_MULTIPLE) * _PAD_MULTIPLE


def teacher_rows(prompts, targets, seq: int, pad: int):
    """Right-padded rows of prompt + target with their next-token labels and scored positions."""
    n = len(prompts)
    tokens, labels = np.full((n, seq), pad, np.int32), np.zeros((n, seq), np.int32)
    mask, scored = np.zeros((n, seq), np.int32), np.zeros((n, seq), bool)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        row = p + t
        tokens[i, :len(row)], mask[i, :len(row)] = row, 1
        labels[i, :len(row) - 1] = row[1:]
        scored[i, max(len(p) - 1, 0):len(row) - 1] = True
    return {"tokens": tokens, "mask": mask, "labels": labels, "scored": scored}
