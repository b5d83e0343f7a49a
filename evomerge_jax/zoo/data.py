"""Datasets of the demo world: the base's pretraining text, the fine-tunes' instruction data, and
the evaluation tasks (fitness / validation / test), held out from all training, exported as JSONL.

A task item is a pair of word strings: `prompt` ("<q> ... <a>") and `target` (the answer sentence,
without the end token). Tokenised, an item is `<bos> prompt target <eos>` and only the target and
the end token are scored (see `probe.exact_match`).

Held out means: no maths item of any split (the same name, object, verb and operands) appears in
pretraining stories or maths fine-tuning, no reading item appears anywhere in training, and the
facts asked in the L2-general splits are never asked in L2 during training (the base knows them,
and answers them in L1).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import world as w

TOKEN_ID = {tok: i for i, tok in enumerate(w.VOCAB)}
PAD, BOS, EOS = TOKEN_ID["<pad>"], TOKEN_ID["<bos>"], TOKEN_ID["<eos>"]
SPLITS = ("fitness", "validation", "test")
TASKS = ("l2_math", "l2_general", "l1_math", "l1_general")
SPLIT_SIZES = {"math": {"fitness": 200, "validation": 200, "test": 400},
               "general": {"fitness": 64, "validation": 64, "test": 128}}
FACTS_PER_SPLIT = 8  # of the 48 facts, 8 per split are asked in the L2-general tasks, 24 trained


@dataclass(frozen=True)
class Item:
    prompt: str
    target: str


def _qa(question: list[str], answer: list[str], q_lang: str, a_lang: str) -> Item:
    return Item(" ".join(["<q>", *w.translate(question, q_lang), "<a>"]),
                " ".join(w.translate(answer, a_lang)))


def _problem_key(p: dict) -> tuple:
    return (p["name"], p["obj"], p["verb"], p["a"], p["b"])


def _distinct(draw, n: int, rng, exclude: set) -> list:
    """n draws with distinct keys, none in `exclude`; the keys join `exclude`."""
    out = []
    while len(out) < n:
        value, key = draw(rng)
        if key not in exclude:
            exclude.add(key)
            out.append(value)
    return out


def _draw_problem(rng):
    p = w.draw_problem(rng)
    return p, _problem_key(p)


def _draw_reading(rng):
    q, a = w.draw_reading(rng)
    return (q, a), tuple(q)


@dataclass(frozen=True)
class Heldout:
    """The evaluation items, and the keys that training must avoid."""

    tasks: dict            # task -> split -> list[Item]
    problem_keys: frozenset
    reading_keys: frozenset
    train_facts: tuple     # (animal, relation) pairs that training may ask in L2


def make_heldout(world_seed: int = w.WORLD_SEED) -> Heldout:
    """The evaluation splits: fixed by the world, the same for every training seed."""
    rng = random.Random(world_seed + 7)
    problems, readings = set(), set()
    facts = list(w.FACTS)
    order = list(range(len(facts)))
    rng.shuffle(order)
    split_facts = {s: [facts[i] for i in order[k * FACTS_PER_SPLIT:(k + 1) * FACTS_PER_SPLIT]]
                   for k, s in enumerate(SPLITS)}
    train_facts = tuple(facts[i] for i in order[len(SPLITS) * FACTS_PER_SPLIT:])
    tasks: dict = {t: {} for t in TASKS}
    for split in SPLITS:
        for lang in ("l2", "l1"):
            n_math = SPLIT_SIZES["math"][split]
            tasks[f"{lang}_math"][split] = [
                _qa(w.maths_question(p), w.problem_answer(p), lang, lang)
                for p in _distinct(_draw_problem, n_math, rng, problems)]
            n_read = SPLIT_SIZES["general"][split] - FACTS_PER_SPLIT
            items = [_qa(w.fact_question(*f), w.fact_statement(*f), lang, lang)
                     for f in split_facts[split]]
            reads = _distinct(_draw_reading, n_read, rng, readings)
            items += [_qa(q, a, lang, lang) for q, a in reads]
            tasks[f"{lang}_general"][split] = items
    return Heldout(tasks, frozenset(problems), frozenset(readings), train_facts)


def export_tasks(heldout: Heldout, root: Path) -> dict[str, Path]:
    """Write root/<task>/<split>.jsonl, one {"prompt", "target"} object per line."""
    paths = {}
    for task, splits in heldout.tasks.items():
        (root / task).mkdir(parents=True, exist_ok=True)
        for split, items in splits.items():
            path = root / task / f"{split}.jsonl"
            path.write_text("".join(json.dumps({"prompt": i.prompt, "target": i.target}) + "\n"
                                    for i in items))
            paths[f"{task}/{split}"] = path
    return paths


# ---- training text -----------------------------------------------------------------------------

def instruction_items(kind: str, n: int, rng, heldout: Heldout) -> list[Item]:
    """Fine-tuning data. kind: l1_math (the maths specialists), l2_general (the L2 specialist),
    l1_reverse (the unrelated model: repeat an L1 sentence backwards, a skill no task asks for)."""
    if kind == "l1_math":
        exclude = set(heldout.problem_keys)
        return [_qa(w.maths_question(p), w.problem_answer(p), "l1", "l1")
                for p in _distinct(_draw_problem, n, rng, exclude)]
    if kind == "l2_general":
        items = []
        for _ in range(n):
            if rng.random() < 0.5:
                f = rng.choice(heldout.train_facts)
                items.append(_qa(w.fact_question(*f), w.fact_statement(*f), "l2", "l2"))
            else:
                items.append(_qa(*_reading_outside(rng, heldout), "l2", "l2"))
        return items
    if kind == "l1_reverse":
        items = []
        for _ in range(n):
            sentence = _plain_sentence(rng, heldout)[:12]
            items.append(_qa(sentence, sentence[::-1], "l1", "l1"))
        return items
    raise ValueError(f"unknown instruction data kind {kind!r}")


def _reading_outside(rng, heldout: Heldout):
    while True:
        q, a = w.draw_reading(rng)
        if tuple(q) not in heldout.reading_keys:
            return q, a


def _problem_outside(rng, heldout: Heldout) -> dict:
    while True:
        p = w.draw_problem(rng)
        if _problem_key(p) not in heldout.problem_keys:
            return p


def _plain_sentence(rng, heldout: Heldout) -> list[str]:
    r = rng.random()
    if r < 0.4:
        return w.fact_statement(*w.draw_fact(rng))
    if r < 0.8:
        return w.story(_problem_outside(rng, heldout))
    return _reading_outside(rng, heldout)[1]


def _qa_words(rng, heldout: Heldout, q_lang: str) -> list[str]:
    """A general question (any of the 48 facts, or reading) answered in L1: the base's habit,
    as an English-centric model answers a Japanese question in English."""
    if rng.random() < 0.5:
        fact = w.draw_fact(rng)
        q, a = w.fact_question(*fact), w.fact_statement(*fact)
    else:
        q, a = _reading_outside(rng, heldout)
    return ["<q>", *w.translate(q, q_lang), "<a>", *a]


def _sentence(kind: str, rng, heldout: Heldout) -> list[str]:
    """One pretraining sentence group of `kind` (the keys of `Recipe.pretrain_mix`)."""
    lang = "l2" if kind.startswith("l2") else "l1"
    if kind in ("l1_facts", "l2_facts"):
        return w.translate(w.fact_statement(*w.draw_fact(rng)), lang)
    if kind in ("l1_stories", "l2_stories"):
        return w.translate(w.story(_problem_outside(rng, heldout)), lang)
    if kind == "parallel":
        src = _plain_sentence(rng, heldout)
        first, second = ("l1", "l2") if rng.random() < 0.5 else ("l2", "l1")
        return w.translate(src, first) + ["<tr>"] + w.translate(src, second)
    if kind == "code_switch":
        words = _plain_sentence(rng, heldout)
        return [w.L2_OF.get(t, t) if rng.random() < 0.5 else t for t in words]
    if kind in ("qa_l1", "qa_l2_to_l1"):
        return _qa_words(rng, heldout, "l1" if kind == "qa_l1" else "l2")
    raise ValueError(f"unknown pretraining kind {kind!r}")


def pretrain_batch(mix: dict[str, float], n: int, seq_len: int, rng,
                   heldout: Heldout) -> tuple[np.ndarray, np.ndarray]:
    """n documents of plain text: tokens [n, S] and loss mask [n, S] (every real token but <bos>).
    A document holds sentence groups of one kind, packed while they fit; QA pairs stand alone."""
    kinds, weights = list(mix), [mix[k] for k in mix]
    tokens = np.full((n, seq_len), PAD, np.int32)
    for row in range(n):
        kind = rng.choices(kinds, weights)[0]
        words: list[str] = []
        while True:
            group = _sentence(kind, rng, heldout)
            if words and len(words) + len(group) > seq_len - 2:
                break
            words += group
            if kind.startswith("qa"):
                break
        ids = [BOS] + [TOKEN_ID[t] for t in words][: seq_len - 2] + [EOS]
        tokens[row, : len(ids)] = ids
    mask = (tokens != PAD).astype(np.float32)
    mask[:, 0] = 0.0
    return tokens, mask


def encode_items(items: list[Item], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """`<bos> prompt target <eos>`, right-padded: tokens [n, S] and a mask [n, S] that is 1 at the
    positions whose token is predicted and scored (the target and <eos>)."""
    tokens = np.full((len(items), seq_len), PAD, np.int32)
    mask = np.zeros((len(items), seq_len), np.float32)
    for row, item in enumerate(items):
        prompt = [BOS] + [TOKEN_ID[t] for t in item.prompt.split()]
        target = [TOKEN_ID[t] for t in item.target.split()] + [EOS]
        if len(prompt) + len(target) > seq_len:
            raise ValueError(f"item longer than {seq_len} tokens: {item}")
        tokens[row, : len(prompt) + len(target)] = prompt + target
        mask[row, len(prompt): len(prompt) + len(target)] = 1.0
    return tokens, mask
