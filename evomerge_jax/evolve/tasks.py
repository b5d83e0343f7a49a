"""Tasks: JSONL data rendered through prompt templates, tokenized once with the model dir's tokenizer
into fixed-shape arrays, and cut into batches (a seeded minibatch of the fitness split per
generation, fixed chunks of the validation and test splits).

Row layouts (every split of a task shares one padded length, so one compiled pass serves them all):

- teacher forcing (exact_match, choice, perplexity): `tokens` [N, S] = prompt + target (+ EOS),
  right-padded; `labels` [N, S] the next token at each position; `scored` [N, S] the positions whose
  prediction is the target (the last prompt token through the token before the end). A choice task
  has one row per (example, choice): arrays [N, C, S], padded choices marked invalid.
- generation: `tokens` [N, S] prompts left-padded (the decoder's convention), targets kept as text.
"""

from __future__ import annotations

import json
import string
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from .config import TaskSection
from .task_data import SPLITS, SplitData, TaskData, pad_to, teacher_rows
from .task_images import IMAGE_FIELD, expand_prompt, image_arrays, image_path
from .task_types import TASK_TYPES, TaskError


def _template_fields(template: str, where: str) -> set[str]:
    try:
        return {f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template)
                if f is not None}
    except ValueError as exc:
        raise TaskError(f"{where}: bad template {template!r} ({exc})") from None


def _read_jsonl(path: Path, task: str, split: str) -> list[tuple[dict, int]]:
    if not path.is_file():
        raise TaskError(f"task {task!r}: {split} file {path} does not exist")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TaskError(f"{path}:{line_no}: not a JSON object ({exc.msg})") from None
        if not isinstance(record, dict):
            raise TaskError(f"{path}:{line_no}: expected a JSON object per line")
        records.append((record, line_no))
    if not records:
        raise TaskError(f"task {task!r}: {split} split {path} is empty")
    return records


def _split_rows(cfg: TaskSection, records, path: Path, tokenizer, eos_id, images):
    """One split's records encoded by the task's type, where each came from, and each one's
    (pixel_values, image size) or None (task_images.py: a record's `image`)."""
    kind = TASK_TYPES[cfg.type]
    encoded, pixels = [], []
    for record, line in records:
        where = f"{path}:{line}"
        one, image = kind.encode(cfg, record, tokenizer, eos_id, where), image_path(
            record, path, where)
        if image is not None:
            one, image = expand_prompt(one, image, images, where)
        elif images is not None and images.image_token_id in one.prompt:
            raise TaskError(f"{where}: the prompt holds the image token {images.image_token!r} "
                            f"but the record has no {IMAGE_FIELD!r}")
        encoded.append(one)
        pixels.append(image)
    return encoded, [(str(path), line) for _, line in records], pixels


def load_task(cfg: TaskSection, tokenizer, context: int | None, images=None) -> TaskData:
    """Read, render and tokenize the three splits; every problem raises before any compute.
    `images` (task_images.ImageInputs): the vision model's processor, for records with an image
    (without it such a record is an error)."""
    kind, eos_id = TASK_TYPES[cfg.type], tokenizer.eos_token_id
    if kind.load is not None:  # a type that reads its own data (lm_eval)
        return kind.load(cfg, tokenizer, context)
    if "append_eos" in kind.keys and cfg.append_eos and eos_id is None:
        raise TaskError(f"task {cfg.name!r}: the tokenizer has no EOS token; set append_eos: false")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos_id or 0)
    raw = {}
    for split in SPLITS:
        path = Path(getattr(cfg.data, split))
        raw[split] = _split_rows(cfg, _read_jsonl(path, cfg.name, split), path, tokenizer, eos_id,
                                 images)
    longest, worst = 0, None
    for encoded, files, _ in raw.values():
        for e, where in zip(encoded, files):
            extra = (cfg.max_new_tokens if kind.generates else
                     max(map(len, e.target)) if kind.per_choice else len(e.target))
            if len(e.prompt) + extra > longest:
                longest, worst = len(e.prompt) + extra, where
    if context is not None and longest > context:
        what = "prompt + max_new_tokens" if kind.generates else "prompt + target"
        raise TaskError(f"{worst[0]}:{worst[1]}: {what} take {longest} tokens, more than the "
                        f"model's context of {context} (task {cfg.name!r})")
    seq = pad_to(longest)
    splits = {split: _arrays(kind, cfg, rows[:2], seq, pad) for split, rows in raw.items()}
    # Every split of a task with images carries the image arrays (one shape: one compiled pass).
    pictures = image_arrays([p for rows in raw.values() for p in rows[2]])
    start = 0
    for split, rows in raw.items():
        n = len(rows[2])
        extra = {k: v[start:start + n] for k, v in pictures.items()}
        splits[split] = replace(splits[split], arrays={**splits[split].arrays, **extra})
        start += n
    return TaskData(cfg, splits, seq, eos_id, pad, generates=kind.generates,
                    new_tokens=cfg.max_new_tokens if kind.generates else 0,
                    eos_ids=() if eos_id is None else (int(eos_id),))


def _arrays(kind, cfg: TaskSection, rows, seq: int, pad: int) -> SplitData:
    encoded, files = rows
    prompts, targets = [e.prompt for e in encoded], [e.target for e in encoded]
    answers, labels = [e.answer for e in encoded], [e.label for e in encoded]
    n = len(prompts)
    if kind.generates:
        width = seq - cfg.max_new_tokens
        tokens, mask = np.full((n, width), pad, np.int32), np.zeros((n, width), np.int32)
        for i, p in enumerate(prompts):
            tokens[i, width - len(p):], mask[i, width - len(p):] = p, 1
        return SplitData({"tokens": tokens, "mask": mask, "valid": np.ones(n, bool),
                          "index": np.arange(n)}, tuple(answers), tuple(files))
    if kind.per_choice:
        width = max(len(t) for t in targets)
        flat_p = [p for p, t in zip(prompts, targets) for _ in range(width)]
        flat_t = [t[c] if c < len(t) else t[0] for t in targets for c in range(width)]
        arrays = {k: v.reshape(n, width, seq)
                  for k, v in teacher_rows(flat_p, flat_t, seq, pad).items()}
        arrays["valid"] = np.array([[c < len(t) for c in range(width)] for t in targets])
        arrays["label"] = np.asarray(labels, np.int32)
        arrays["nbytes"] = np.array([[len(a[c].encode()) if c < len(a) else 1 for c in range(width)]
                                     for a in answers], np.float32)
        return SplitData(arrays, tuple(map(tuple, answers)), tuple(files))
    arrays = teacher_rows(prompts, targets, seq, pad)
    arrays["valid"] = np.ones(n, bool)
    return SplitData(arrays, tuple(answers), tuple(files))


def load_tasks(tasks, tokenizer, context: int | None, images=None) -> tuple[TaskData, ...]:
    return tuple(load_task(t, tokenizer, context, images) for t in tasks)


def load_tokenizer(path: Path):
    """transformers' AutoTokenizer from a local dir, offline."""
    import transformers  # imported on first use: it takes seconds, and `plan` may not need it

    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: cannot load a tokenizer ({' '.join(str(exc).split())[:200]})"
                          ) from None
