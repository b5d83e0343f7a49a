"""Task metrics: the device kernels that score one batch for every candidate of a population model,
and the host side that turns their outputs into accumulators (summed over batches) and metrics.

Exact match without decoding (docs/design.md §1): greedy decoding reproduces the target
exactly when, with the target fed in, the argmax at every target position (the end token included)
is the next target token. One teacher-forced forward gives that, and the summed log-likelihood
(choice, perplexity) from the same logits.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np


@dataclass(frozen=True)
class Generation:
    """The static part of a generate task that the compiled pass needs."""

    max_new_tokens: int
    eos_ids: tuple[int, ...]
    pad_id: int


def generation_of(task) -> Generation:
    eos = () if task.eos_id is None else (int(task.eos_id),)
    return Generation(task.cfg.max_new_tokens, eos, int(task.pad_id))


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
        h = model.hidden(weights, cand, rows["tokens"], rows["mask"])
        teacher = model.head_map(weights, cand, h, lambda logits: teacher_stats(
            logits, rows["labels"], rows["scored"]))
    generated = tuple(
        model.generate(weights, cand, b["tokens"], b["mask"], max_new_tokens=g.max_new_tokens,
                       eos_ids=g.eos_ids, pad_id=g.pad_id)
        for g, b in zip(generations, batch["generate"]))
    return teacher, generated


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


def accumulate(task, outputs, batch: dict, tokenizer, answers=()) -> dict[str, np.ndarray]:
    """Host side: per-candidate sums [P] of one batch (summed again over batches). `answers`: the
    split's target texts (generate)."""
    cfg = task.cfg
    valid = np.asarray(batch["valid"])
    if cfg.type == "generate":
        tokens = np.asarray(outputs)
        eos_ids = generation_of(task).eos_ids
        correct = np.zeros(tokens.shape[0])
        for p in range(tokens.shape[0]):
            for b in np.flatnonzero(valid):
                text = completion_text(tokenizer, tokens[p, b], eos_ids, cfg.stop)
                target = answers[int(batch["index"][b])]
                numeric = cfg.compare == "numeric"
                got = extract_answer(text, cfg.answer_regex, numeric)
                want = extract_answer(target, cfg.answer_regex, numeric)
                correct[p] += got is not None and (
                    math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) if numeric else got == want)
        return {"correct": correct, "count": np.full(tokens.shape[0], valid.sum(), float)}
    logp, count, hit = (np.asarray(o, np.float64) for o in outputs)
    if cfg.type == "choice":
        row_ok = valid.any(axis=-1)
        best = np.argmax(np.where(valid, logp, -np.inf), axis=-1)
        best_norm = np.argmax(np.where(valid, logp / batch["nbytes"], -np.inf), axis=-1)
        label = batch["label"]
        return {"correct": ((best == label) & row_ok).sum(-1),
                "correct_norm": ((best_norm == label) & row_ok).sum(-1),
                "count": np.full(logp.shape[0], row_ok.sum(), float)}
    if cfg.type == "exact_match":
        return {"correct": (hit * valid).sum(-1), "count": np.full(hit.shape[0], valid.sum(), float)}
    return {"nll": -(logp * valid).sum(-1), "tokens": (count * valid).sum(-1)}


def finalize(task_type: str, sums: dict, metric: str = "acc") -> dict[str, np.ndarray]:
    """Metrics [P] from accumulated sums; `score` is the one that enters the fitness."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if task_type == "perplexity":
            nll = sums["nll"] / sums["tokens"]
            return {"nll": nll, "ppl": np.exp(nll), "score": -nll}
        out = {"acc": sums["correct"] / sums["count"]}
        if task_type == "choice":
            out["acc_norm"] = sums["correct_norm"] / sums["count"]
    out["score"] = out[metric if task_type == "choice" else "acc"]
    return out
