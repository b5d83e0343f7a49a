"""Task metrics: the device kernels that score one batch for every candidate of a population model,
and the text side of generated answers. The host side per task type (sums and metrics) is in
`task_types.py`.

Exact match without decoding (docs/design.md §1): greedy decoding reproduces the target
exactly when, with the target fed in, the argmax at every target position (the end token included)
is the next target token. One teacher-forced forward gives that, and the summed log-likelihood
(choice, perplexity) from the same logits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp


@dataclass(frozen=True)
class Generation:
    """The static part of a generate task that the compiled pass needs."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int


def generation_of(task) -> Generation:
    return Generation(task.new_tokens, tuple(task.eos_ids), int(task.pad_id))


def teacher_stats(logits_bsv, labels_bs, scored_bs):
    """Per row: summed log-probability of the scored labels, their count, and whether the argmax
    equals the label at every scored position."""
    logp = jax.nn.log_softmax(logits_bsv, axis=-1)
    token_logp = jnp.take_along_axis(logp, labels_bs[..., None], axis=-1)[..., 0]
    logp_sum = jnp.sum(jnp.where(scored_bs, token_logp, 0.0), axis=-1)
    count = jnp.sum(scored_bs, axis=-1).astype(jnp.float32)
    hit = jnp.all(jnp.where(scored_bs, jnp.argmax(logits_bsv, axis=-1) == labels_bs, True), -1)
    return logp_sum, count, hit


def run_tasks(model, generations: tuple, weights, cand, batch: dict):
    """Device outputs for every candidate (leading axis P): the teacher-forced rows of all tasks
    in one forward (`batch["teacher"]`, or None), then each generate task's new tokens."""
    teacher = None
    if batch.get("teacher") is not None:
        rows = batch["teacher"]
        h = model.hidden(weights, cand, rows["tokens"], rows["mask"], **images_of(rows))
        teacher = model.head_map(weights, cand, h, lambda logits: teacher_stats(
            logits, rows["labels"], rows["scored"]))
    generated = tuple(
        model.generate(weights, cand, b["tokens"], b["mask"], max_new_tokens=g.max_new_tokens,
                       eos_ids=g.eos_ids, pad_id=g.pad_id, **images_of(b))
        for g, b in zip(generations, batch["generate"]))
    return teacher, generated


def images_of(rows: dict) -> dict:
    """The keyword a population model takes for a batch with images (evolve/vision.py): `image`
    = (embeds [B, S, D], mask [B, S]), computed once per batch and shared by the candidates;
    {} for a batch without images (the pass is then exactly the text-only one)."""
    if rows.get("image_embeds") is None:
        return {}
    return {"image": (rows["image_embeds"], rows["image_mask"])}


def extract_answer(text: str, pattern: str, numeric: bool):
    """The last match of `pattern` in `text` (its first group when it has one); as a float when
    `numeric` (commas dropped, as MGSM scoring does); None when nothing matches."""
    matches = list(re.finditer(pattern, text))
    if not matches:
        return None if numeric else text.strip()
    last = matches[-1]
    value = last.group(1) if last.re.groups else last.group(0)
    if not numeric:
        return value.strip()
    try:
        return float(value.replace(",", ""))
    except ValueError:
        return None


def completion_text(tokenizer, ids, eos_ids, stops) -> str:
    ids = list(ids)
    ends = [ids.index(e) for e in eos_ids if e in ids]
    text = tokenizer.decode(ids[:min(ends)] if ends else ids, skip_special_tokens=True)
    for stop in stops:
        text = text.split(stop)[0]
    return text
