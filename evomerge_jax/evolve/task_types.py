"""The task-type registry: one frozen entry per `type:` of an evolve config's task.

An entry says which config keys the type reads, how one JSONL record becomes token ids
(`encode`), how its rows are laid out (teacher-forced rows, one row per choice, or left-padded
prompts that the pass decodes), and how the pass's outputs become per-candidate sums
(`accumulate`) and metrics (`finalize`; `score` is the one that enters the fitness). `tasks.py`,
`metrics.py`, the evaluator, the memory model and the config read these entries; adding a type is
its functions and one line in `TASK_TYPES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..chat import chat_messages, chat_token_ids, render_chat
from ..errors import ConfigError
from . import lm_eval_task
from .metrics import completion_text, extract_answer
from .rouge import rouge_l


class TaskError(ConfigError):
    """A task file or template that cannot be used."""


@dataclass(frozen=True)
class Encoded:
    """One record as token ids: `target` is a list of ids, or one list per choice."""

    prompt: list
    target: list
    answer: object          # the target text (or the choice texts)
    label: int | None = None


@dataclass(frozen=True)
class TaskType:
    name: str
    keys: frozenset           # config keys that only this type reads
    needs_target: bool        # the config must give a `target` template
    generates: bool           # the pass decodes new tokens (else one teacher-forced forward)
    per_choice: bool          # arrays [N, C, S]: one teacher-forced row per (example, choice)
    encode: Callable          # (cfg, record, tokenizer, eos_id, where) -> Encoded
    accumulate: Callable      # (task, outputs, batch, tokenizer, answers) -> {sum: [P]}
    finalize: Callable        # (task, sums) -> {metric: [P]}, "score" included
    reads_files: bool = True  # `data` JSONL files and a `prompt` template (else `load` reads)
    load: Callable | None = None  # (cfg, tokenizer, context) -> TaskData, for its own data
    # per-example scores in [0, 1], higher is better (M2N2's resources): correct or not, or for
    # perplexity the per-token geometric-mean probability exp(-nll / tokens); None: the type has
    # none (search m2n2 refuses it)
    items: Callable | None = None  # (task, outputs, batch, tokenizer, answers) -> [P, B]


def _render(template: str, record: dict, where: str) -> str:
    try:
        return template.format(**record)
    except (KeyError, IndexError) as exc:
        raise TaskError(f"{where}: missing field {exc.args[0]!r} used by the template") from None


def token_ids(tokenizer, text: str, specials: bool) -> list[int]:
    """Token ids; an empty prompt still gets the tokenizer's special prefix (BOS)."""
    if not text and not specials:
        return []
    return list(tokenizer(text, add_special_tokens=specials)["input_ids"])


def _prompt(cfg, record, tokenizer, where, optional: bool = False) -> list[int]:
    text = _render(cfg.prompt, record, where)
    if cfg.chat_template:  # the same rendering as the lm-eval model's (chat.py)
        text = render_chat(tokenizer, chat_messages(text, cfg.system_prompt), where=where)
        ids = chat_token_ids(tokenizer, text)
    else:
        ids = token_ids(tokenizer, text, True)
    if not ids and not optional:
        raise TaskError(f"{where}: the prompt renders to no tokens")
    return ids


def _target(cfg, record, tokenizer, where, eos: list, prompt_optional: bool = False) -> Encoded:
    prompt = _prompt(cfg, record, tokenizer, where, prompt_optional)
    text = _render(cfg.target, record, where)
    ids = token_ids(tokenizer, text, False) + eos
    if not ids:
        raise TaskError(f"{where}: the target renders to no tokens")
    return Encoded(prompt, ids, text)


# ---- encode -----------------------------------------------------------------------------------

def _encode_exact(cfg, record, tokenizer, eos_id, where) -> Encoded:
    return _target(cfg, record, tokenizer, where, [eos_id] if cfg.append_eos else [])


def _encode_perplexity(cfg, record, tokenizer, eos_id, where) -> Encoded:
    return _target(cfg, record, tokenizer, where, [], prompt_optional=True)


def _encode_generate(cfg, record, tokenizer, eos_id, where) -> Encoded:
    prompt = _prompt(cfg, record, tokenizer, where)
    text = _render(cfg.target, record, where)
    if cfg.compare == "numeric" and extract_answer(text, cfg.answer_regex, numeric=True) is None:
        raise TaskError(f"{where}: target {text!r} holds no number matching answer_regex "
                        f"{cfg.answer_regex!r} (use compare: string for text answers)")
    return Encoded(prompt, [], text)


def _encode_choice(cfg, record, tokenizer, eos_id, where) -> Encoded:
    prompt = _prompt(cfg, record, tokenizer, where)
    choices, label = record.get(cfg.choices), record.get(cfg.label)
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise TaskError(f"{where}: field {cfg.choices!r} must be a non-empty list of strings")
    if not isinstance(label, int) or not 0 <= label < len(choices):
        raise TaskError(f"{where}: field {cfg.label!r} must be an index into {cfg.choices!r} "
                        f"(0..{len(choices) - 1}), got {label!r}")
    return Encoded(prompt, [token_ids(tokenizer, c, False) for c in choices], choices, label)


# ---- accumulate: per-candidate sums [P] of one batch -------------------------------------------

def _count(valid, candidates: int) -> np.ndarray:
    return np.full(candidates, valid.sum(), float)


def _accumulate_exact(task, outputs, batch, tokenizer, answers) -> dict:
    _, _, hit = (np.asarray(o, np.float64) for o in outputs)
    valid = np.asarray(batch["valid"])
    return {"correct": (hit * valid).sum(-1), "count": _count(valid, hit.shape[0])}


def _accumulate_perplexity(task, outputs, batch, tokenizer, answers) -> dict:
    logp, count, _ = (np.asarray(o, np.float64) for o in outputs)
    valid = np.asarray(batch["valid"])
    return {"nll": -(logp * valid).sum(-1), "tokens": (count * valid).sum(-1)}


def _accumulate_choice(task, outputs, batch, tokenizer, answers) -> dict:
    logp = np.asarray(outputs[0], np.float64)
    valid = np.asarray(batch["valid"])
    row_ok = valid.any(axis=-1)
    best = np.argmax(np.where(valid, logp, -np.inf), axis=-1)
    best_norm = np.argmax(np.where(valid, logp / batch["nbytes"], -np.inf), axis=-1)
    label = batch["label"]
    return {"correct": ((best == label) & row_ok).sum(-1),
            "correct_norm": ((best_norm == label) & row_ok).sum(-1),
            "count": _count(row_ok, logp.shape[0])}


def _generate_hits(task, outputs, batch, tokenizer, answers) -> np.ndarray:
    """[P, B]: candidate p's score on example b: 1 or 0 (the expected answer held or not), or
    under `compare: rouge_l` the ROUGE-L F-measure of the completion against the target."""
    cfg, tokens = task.cfg, np.asarray(outputs)
    valid = np.asarray(batch["valid"])
    eos_ids = () if task.eos_id is None else (int(task.eos_id),)
    numeric = cfg.compare == "numeric"
    hits = np.zeros(tokens.shape[:2])
    for p in range(tokens.shape[0]):
        for b in np.flatnonzero(valid):
            text = completion_text(tokenizer, tokens[p, b], eos_ids, cfg.stop)
            answer = answers[int(batch["index"][b])]
            if cfg.compare == "rouge_l":
                hits[p, b] = rouge_l(text.strip(), answer, cfg.rouge_tokenizer)
                continue
            got = extract_answer(text, cfg.answer_regex, numeric)
            want = extract_answer(answer, cfg.answer_regex, numeric)
            hits[p, b] = got is not None and (
                math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9) if numeric else got == want)
    return hits


def _accumulate_generate(task, outputs, batch, tokenizer, answers) -> dict:
    hits = _generate_hits(task, outputs, batch, tokenizer, answers)
    return {"correct": hits.sum(-1), "count": _count(np.asarray(batch["valid"]), hits.shape[0])}


# ---- items: per-example scores [P, B] in [0, 1] (invalid rows: NaN) ----------------------------

def _items_exact(task, outputs, batch, tokenizer, answers) -> np.ndarray:
    hit = np.asarray(outputs[2], np.float64)
    return np.where(np.asarray(batch["valid"]), hit, np.nan)


def _items_perplexity(task, outputs, batch, tokenizer, answers) -> np.ndarray:
    logp, count, _ = (np.asarray(o, np.float64) for o in outputs)
    with np.errstate(divide="ignore", invalid="ignore"):
        prob = np.exp(logp / count)
    return np.where(np.asarray(batch["valid"]), prob, np.nan)


def _items_choice(task, outputs, batch, tokenizer, answers) -> np.ndarray:
    logp = np.asarray(outputs[0], np.float64)
    valid = np.asarray(batch["valid"])
    norm = logp / batch["nbytes"] if task.cfg.metric == "acc_norm" else logp
    best = np.argmax(np.where(valid, norm, -np.inf), axis=-1)
    return np.where(valid.any(axis=-1), (best == batch["label"]).astype(float), np.nan)


def _items_generate(task, outputs, batch, tokenizer, answers) -> np.ndarray:
    hits = _generate_hits(task, outputs, batch, tokenizer, answers)
    return np.where(np.asarray(batch["valid"]), hits, np.nan)


# ---- finalize ---------------------------------------------------------------------------------

def _ratio(a, b):
    with np.errstate(divide="ignore", invalid="ignore"):
        return a / b


def _finalize_acc(task, sums) -> dict:
    acc = _ratio(sums["correct"], sums["count"])
    return {"acc": acc, "score": acc}


def _finalize_generate(task, sums) -> dict:
    """acc, or under `compare: rouge_l` the mean ROUGE-L F-measure × 100 (the paper's scale)."""
    if task.cfg.compare != "rouge_l":
        return _finalize_acc(task, sums)
    rouge = 100 * _ratio(sums["correct"], sums["count"])
    return {"rouge_l": rouge, "score": rouge}


def _finalize_choice(task, sums) -> dict:
    out = {"acc": _ratio(sums["correct"], sums["count"]),
           "acc_norm": _ratio(sums["correct_norm"], sums["count"])}
    return {**out, "score": out[task.cfg.metric]}


def _finalize_perplexity(task, sums) -> dict:
    nll = _ratio(sums["nll"], sums["tokens"])
    return {"nll": nll, "ppl": np.exp(nll), "score": -nll}


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    TaskType("exact_match", frozenset({"target", "append_eos"}), needs_target=True,
             generates=False, per_choice=False, encode=_encode_exact,
             accumulate=_accumulate_exact, finalize=_finalize_acc, items=_items_exact),
    TaskType("generate", frozenset({"target", "max_new_tokens", "stop", "answer_regex",
                                    "compare", "rouge_tokenizer"}), needs_target=True, generates=True,
             per_choice=False, encode=_encode_generate, accumulate=_accumulate_generate,
             finalize=_finalize_generate, items=_items_generate),
    TaskType("choice", frozenset({"choices", "label", "metric"}), needs_target=False,
             generates=False, per_choice=True, encode=_encode_choice,
             accumulate=_accumulate_choice, finalize=_finalize_choice, items=_items_choice),
    TaskType("perplexity", frozenset({"target"}), needs_target=False, generates=False,
             per_choice=False, encode=_encode_perplexity, accumulate=_accumulate_perplexity,
             finalize=_finalize_perplexity, items=_items_perplexity),
    TaskType("lm_eval", frozenset({"lm_eval"}), needs_target=False, generates=False,
             per_choice=False, encode=None, accumulate=lm_eval_task.accumulate,
             finalize=lm_eval_task.finalize, reads_files=False,
             load=lm_eval_task.load_lm_eval_task),
)}
