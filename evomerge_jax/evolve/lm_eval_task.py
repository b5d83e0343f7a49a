"""The `lm_eval` task type: an lm-evaluation-harness task as fitness inside the population pass.

lm-eval's own task objects build the requests (`TaskManager.load`, `Task.build_all_requests`:
prompts, few-shot contexts, choices, `until` strings, chat templates) and score them
(`Task` filters, `process_results`, `aggregation`); `lm_eval_tokens.HFTokenization` turns the
requests into token ids as lm-eval's `hf` backend does. The pass itself computes, for every
candidate at once, the log-likelihoods of all (context, continuation) rows of a batch of docs
(multiple_choice: one row per choice; loglikelihood: one; loglikelihood_rolling: one per window),
or each doc's greedy generation. Nothing calls lm-eval per candidate: its Python scoring runs on
the pass's outputs, per candidate, as lm-eval's evaluator runs it on one model's.

Layout (tasks.py's): teacher-forced rows [N, R, S] (R: the most rows a doc has; `valid` marks a
doc's own), or left-padded prompts [N, W] that the pass decodes for the task's `max_gen_toks`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from unittest import mock

import numpy as np

from ..errors import ConfigError
from .task_data import SplitData, TaskData, pad_to, teacher_rows

TEACHER = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")
SPLITS = ("fitness", "validation", "test")


@dataclass(frozen=True)
class DocRequests:
    """One doc of a split: lm-eval's task object, the doc, its requests (sorted by idx) and how
    many pass rows each request spans (rolling windows; 1 otherwise; generation: 0)."""

    task: object
    doc: object
    instances: tuple
    rows: tuple


@dataclass(frozen=True)
class LmEvalInfo:
    """What the host side needs beyond the arrays (TaskData.lm)."""

    output_type: str
    aggregation: dict       # metric -> lm-eval aggregation function
    higher_is_better: dict  # metric -> bool
    score_key: str          # "metric,filter" of the fitness score
    tokens: object          # HFTokenization
    until: tuple = ()       # generate_until: stop strings


@contextmanager
def _quiet():
    """No progress bars from lm-eval's request building or the datasets loader: errors stay one
    line on stderr."""
    import datasets.utils as ds
    import lm_eval.api.task as lm_task

    was_off = ds.are_progress_bars_disabled()
    ds.disable_progress_bars()
    try:
        with mock.patch.object(lm_task, "tqdm", partial(lm_task.tqdm, disable=True)):
            yield
    finally:
        if not was_off:
            ds.enable_progress_bars()


def _load_tasks(section, where: str) -> dict:
    """split -> lm-eval Task object (one object per distinct name)."""
    from ..lm_eval_tokens import task_manager

    include = section.include_path
    if include is not None and not Path(include).is_dir():
        raise ConfigError(f"{where}: lm_eval.include_path {include}: no such directory")
    manager = task_manager(include, list(section.names().values()))
    loaded = {}
    for name in dict.fromkeys(section.names().values()):
        if not manager.match_tasks([name]):
            raise ConfigError(f"{where}: unknown lm-eval task {name!r} (local YAML tasks need "
                              "lm_eval.include_path)")
        tasks = manager.load([name])["tasks"]
        if name not in tasks or len(tasks) != 1:
            raise ConfigError(f"{where}: lm-eval name {name!r} is a group or tag of "
                              f"{len(tasks)} tasks; name one task")
        loaded[name] = tasks[name]
    return {split: loaded[name] for split, name in section.names().items()}


def _requests(task, cfg, tokens) -> dict:
    """doc_id -> the doc's instances sorted by idx, built by lm-eval (chat template and system
    prompt as lm-eval applies them)."""
    chat = bool(cfg.chat_template)
    task.build_all_requests(rank=0, world_size=1, apply_chat_template=chat,
                            system_instruction=cfg.system_prompt,
                            chat_template=tokens.apply_chat_template if chat else None,
                            tokenizer_name=tokens.tokenizer_name if chat else "")
    by_doc: dict = {}
    for inst in task.instances:
        if (inst.repeats or 1) != 1:
            raise ConfigError(f"task {cfg.name!r}: lm-eval task {task.config.task!r} repeats each "
                              "request; greedy scoring needs repeats: 1")
        by_doc.setdefault(inst.doc_id, []).append(inst)
    return {d: sorted(v, key=lambda i: i.idx) for d, v in sorted(by_doc.items())}


def _split_docs(section, per_split: dict, name: str) -> dict:
    """split -> doc ids: a seeded permutation cut by `split` (one task), or every doc."""
    if section.task is None:
        return {s: sorted(per_split[s]) for s in SPLITS}
    ids = sorted(per_split["fitness"])
    order = np.random.default_rng(section.split_seed).permutation(len(ids))
    n_fit = round(section.split[0] * len(ids))
    n_val = round(section.split[1] * len(ids))
    cuts = {"fitness": order[:n_fit], "validation": order[n_fit:n_fit + n_val],
            "test": order[n_fit + n_val:]}
    out = {s: sorted(ids[i] for i in c) for s, c in cuts.items()}
    empty = [s for s, d in out.items() if not d]
    if empty:
        raise ConfigError(f"task {name!r}: lm_eval.split leaves the {', '.join(empty)} split empty "
                          f"({len(ids)} docs)")
    return out


def load_lm_eval_task(cfg, tokenizer, context: int | None):
    """TaskData of an `lm_eval` task: every split's requests built and tokenized."""
    from ..lm_eval_tokens import HFTokenization

    where = f"task {cfg.name!r}"
    section = cfg.lm_eval
    root = Path(tokenizer.name_or_path)
    tokens = HFTokenization(tokenizer, root if root.is_dir() else None,
                            max_length=context or 2048)
    with _quiet():
        tasks = _load_tasks(section, where)
        requests = {id(t): _requests(t, cfg, tokens) for t in {id(t): t for t in
                                                                tasks.values()}.values()}
    kinds = {t.OUTPUT_TYPE for t in tasks.values()}
    if len(kinds) != 1:
        raise ConfigError(f"{where}: the splits' lm-eval tasks differ in output_type "
                          f"({', '.join(sorted(kinds))})")
    (kind,) = kinds
    docs = _split_docs(section, {s: requests[id(t)] for s, t in tasks.items()}, cfg.name)
    info = _info(cfg, tasks["fitness"], kind, tokens, where)
    pad = tokens.pad_id
    if kind in TEACHER:
        rows, splits = {}, {}
        for split, task in tasks.items():
            rows[split] = [_teacher_doc(task, requests[id(task)][d], tokens, kind)
                           for d in docs[split]]
        longest = max(len(c) + len(t) for split in rows for _, pairs in rows[split]
                      for c, t in pairs)
        if context is not None and longest > context:
            raise ConfigError(f"{where}: a request takes {longest} tokens, more than the model's "
                              f"context of {context}")
        seq = pad_to(longest)
        width = max(len(pairs) for split in rows for _, pairs in rows[split])
        for split, docs_rows in rows.items():
            flat_c, flat_t, valid = [], [], []
            for _, pairs in docs_rows:
                filler = [pairs[0]] * (width - len(pairs))
                flat_c += [c for c, _ in pairs + filler]
                flat_t += [t for _, t in pairs + filler]
                valid.append([r < len(pairs) for r in range(width)])
            n = len(docs_rows)
            arrays = {k: v.reshape(n, width, seq)
                      for k, v in teacher_rows(flat_c, flat_t, seq, pad).items()}
            arrays["valid"] = np.asarray(valid)
            arrays["index"] = np.arange(n)
            splits[split] = SplitData(arrays, tuple(d for d, _ in docs_rows))
        return TaskData(cfg, splits, seq, tokenizer.eos_token_id, pad, lm=info)
    # generate_until: one greedy generation per doc
    prompts, budget = {}, None
    for split, task in tasks.items():
        prompts[split] = []
        for d in docs[split]:
            (inst,) = requests[id(task)][d]
            until, max_gen = tokens.generation_settings(inst.args[1])
            if budget not in (None, (tuple(until), max_gen)):
                raise ConfigError(f"{where}: the docs' generation_kwargs differ (until, "
                                  "max_gen_toks); the pass decodes one setting per task")
            budget = (tuple(until), max_gen)
            ids = tokens.generation_prompt_ids(inst.args[0], tokens.max_length - max_gen)
            prompts[split].append((DocRequests(task, inst.doc, (inst,), (0,)), ids))
    until, max_gen = budget
    longest = max(len(ids) for split in prompts.values() for _, ids in split)
    width = pad_to(longest)
    splits = {}
    for split, items in prompts.items():
        n = len(items)
        toks, mask = np.full((n, width), pad, np.int32), np.zeros((n, width), np.int32)
        for i, (_, ids) in enumerate(items):
            toks[i, width - len(ids):], mask[i, width - len(ids):] = ids, 1
        splits[split] = SplitData({"tokens": toks, "mask": mask, "valid": np.ones(n, bool),
                                   "index": np.arange(n)}, tuple(d for d, _ in items))
    info = LmEvalInfo(**{**info.__dict__, "until": until})
    return TaskData(cfg, splits, width + max_gen, tokenizer.eos_token_id, pad, generates=True,
                    new_tokens=max_gen, eos_ids=tokens.eos_ids, lm=info)


def _teacher_doc(task, instances, tokens, kind):
    """(DocRequests, [(context ids, continuation ids)]) of one doc."""
    pairs, spans = [], []
    for inst in instances:
        if kind == "loglikelihood_rolling":
            got = tokens.rolling_pairs(inst.args[0])
        else:
            got = tokens.loglikelihood([inst], disable_tqdm=True)
        pairs += got
        spans.append(len(got))
    return DocRequests(task, instances[0].doc, tuple(instances), tuple(spans)), pairs


def _info(cfg, task, kind, tokens, where) -> LmEvalInfo:
    metrics = list(task._metric_fn_list)
    filters = [f.name for f in task._filters]
    metric = cfg.lm_eval.metric or metrics[0]
    filt = cfg.lm_eval.filter or filters[0]
    if metric not in metrics:
        raise ConfigError(f"{where}: lm_eval.metric {metric!r} is not one of the task's metrics "
                          f"({', '.join(metrics)})")
    if filt not in filters:
        raise ConfigError(f"{where}: lm_eval.filter {filt!r} is not one of the task's filters "
                          f"({', '.join(filters)})")
    return LmEvalInfo(kind, dict(task.aggregation()), dict(task.higher_is_better()),
                      f"{metric},{filt}", tokens)


# ---- host side of the pass's outputs ----------------------------------------------------------

def _responses(info, outputs, docs, valid, p) -> list:
    """Candidate p's lm-eval responses, one list per doc (one entry per request)."""
    out = []
    if info.output_type == "generate_until":
        tokens = np.asarray(outputs)
        for b in valid:
            out.append([info.tokens.generated_text(tokens[p, b].tolist(), list(info.until))])
        return out
    logp, _, hit = (np.asarray(o) for o in outputs)
    for b in valid:
        row, resps = 0, []
        for span in docs[b].rows:
            if info.output_type == "loglikelihood_rolling":
                resps.append(float(np.sum(logp[p, b, row:row + span], dtype=np.float64)))
            else:
                resps.append((float(logp[p, b, row]), bool(hit[p, b, row])))
            row += span
        out.append(resps)
    return out


def accumulate(task, outputs, batch, tokenizer, answers) -> dict:
    """Per candidate, lm-eval's filters and process_results over the batch's docs; the per-doc
    metric values are kept (lists per candidate) for the task's own aggregation."""
    info = task.lm
    valid = np.flatnonzero(np.asarray(batch["valid"]).reshape(len(batch["valid"]), -1).any(-1))
    docs = [answers[int(i)] for i in batch["index"]]
    n_cand = (np.asarray(outputs) if info.output_type == "generate_until"
              else np.asarray(outputs[0])).shape[0]
    items: dict = {}
    for p in range(n_cand):
        copies = []
        for b, resps in zip(valid, _responses(info, outputs, docs, valid, p)):
            for inst, resp in zip(docs[b].instances, resps):
                clone = copy.copy(inst)
                clone.resps, clone.filtered_resps = [resp], {}
                copies.append((b, clone))
        by_task: dict = {}
        for b, clone in copies:
            by_task.setdefault(id(docs[b].task), (docs[b].task, []))[1].append(clone)
        for lm_task, clones in by_task.values():
            for ensemble in lm_task._filters:
                ensemble.apply(clones)
        grouped: dict = {}
        for b, clone in copies:
            grouped.setdefault(b, []).append(clone)
        for b, clones in grouped.items():
            for key in clones[0].filtered_resps:
                metrics = docs[b].task.process_results(
                    docs[b].doc, [c.filtered_resps[key] for c in clones])
                for metric, value in metrics.items():
                    lists = items.setdefault(f"{metric},{key}", [[] for _ in range(n_cand)])
                    lists[p].append(value)
    out = {}
    for key, lists in items.items():
        arr = np.empty(n_cand, object)
        for p, values in enumerate(lists):
            arr[p] = values
        out[key] = arr
    return out


def finalize(task, sums) -> dict:
    """lm-eval's aggregation of each metric per candidate; `score` is the configured metric,
    negated when lower is better."""
    info = task.lm
    out = {}
    for key, per_cand in sums.items():
        metric = key.split(",", 1)[0]
        out[key] = np.asarray([float(info.aggregation[metric](list(values))) if values
                               else np.nan for values in per_cand], np.float64)
    score = out.get(info.score_key, np.full(len(next(iter(sums.values()))), np.nan))
    sign = 1.0 if info.higher_is_better.get(info.score_key.split(",", 1)[0], True) else -1.0
    return {**out, "score": sign * score}
