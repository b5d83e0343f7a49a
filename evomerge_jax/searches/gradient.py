"""Gradient-learned coefficients (`search: gradient`): the PS genome (merge weights, densities and
any other parameter the configured method evolves, per layer group and source) learned by Adam
(optax) through the merge and the forward pass, on the loss `gradient.loss` names
(evolve/gradient_loss.py): the targets' NLL on the fitness split, or AdaMerging's entropy of the
next token after each prompt (labels unused).

Same sources, genome, tasks, splits, plan, export and `best.json` as PS: genes start at
`strategy.mean`, stay in [0, 1] (projected after every step), and the candidate of step s is
scored on validation every `gradient.validate_every` steps; the best there is the run's `best`.
Masks (DARE, DELLA) are drawn once from `candidate_keys(seed, 0, 0)` and kept for the whole run,
so the exported model is the one that was trained. Parameters the loss cannot move (a magnitude
trim's density) get zero gradient and stay where they start.

One log line per step (log.jsonl, with PS's fields: `fitness` is minus the step's loss), and
`gradient_state.json` (genes, Adam's state, the best) rewritten atomically after every step:
`--resume` continues from the last saved step as the uninterrupted run would have.
`forward_passes` counts candidate passes over a batch: one per step (its backward pass costs
about two more) plus one per validation batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import jax
import numpy as np
import optax

from ..errors import ConfigError
from ..evolve.config_sections import GradientSection
from ..evolve.evaluate import combine
from ..evolve.gradient_loss import loss_and_grad, loss_rows, step_rows
from ..evolve.loop import Best, _truncate_log
from ..fileio import atomic_write_text
from ..parallel.distributed import is_main
from ..parallel.seeds import candidate_keys
from ..ps.search import ps_parts
from .own_loop import append_log, keep_best
from .stage import build_mesh, check_mesh, finish, saved_plan, stage_evaluator, start_run_dir

LOSS_TYPES = ("exact_match", "perplexity")  # teacher-forced rows with one target each


def settings(cfg) -> GradientSection:
    return cfg.gradient or GradientSection()


def prepare_gradient(cfg, log=print):
    """Every check of a `search: gradient` config, no weights read: (search, tasks, tokenizer,
    settings)."""
    wrong = [f"{t.name} ({t.type})" for t in cfg.tasks if t.type not in LOSS_TYPES]
    if wrong:
        raise ConfigError(f"tasks: search gradient learns from tasks of type "
                          f"{' or '.join(LOSS_TYPES)}; not {', '.join(wrong)}")
    search, tasks, tokenizer = ps_parts(cfg)
    return search, tasks, tokenizer, settings(cfg)


def _save_state(run_dir, next_step: int, genome, opt_state, best, passes: int) -> None:
    if is_main():
        state = {"next_step": next_step, "genome": np.asarray(genome).tolist(),
                 "adam": [np.asarray(x).tolist() for x in jax.tree.leaves(opt_state)],
                 "best": None if best is None else asdict(best), "forward_passes": passes}
        atomic_write_text(run_dir / "gradient_state.json", json.dumps(state) + "\n")


def _load_state(run_dir, template):
    state = json.loads((run_dir / "gradient_state.json").read_text())
    leaves, tree = jax.tree.flatten(template)
    adam = jax.tree.unflatten(tree, [np.asarray(x, np.asarray(t).dtype)
                                     for x, t in zip(state["adam"], leaves)])
    best = Best(**state["best"]) if state["best"] else None
    return (state["next_step"], np.asarray(state["genome"], np.float32), adam, best,
            state["forward_passes"])


def run_gradient(cfg, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
                 log=print, devices=None, on_generation=None, export: bool = True) -> dict:
    """The registry's runner of `search: gradient`; returns results.json's content."""
    del progress  # one log line per step
    check_mesh(cfg)
    search, tasks, tokenizer, grad = prepare_gradient(cfg, log)
    plan = saved_plan(cfg, resume)
    mesh = build_mesh(cfg, search, devices, log)
    run_dir = start_run_dir(cfg, resume, overwrite)
    search.load(mesh)
    if grad.evolve:  # the hybrid: a strategy around Adam (searches/gradient_hybrid.py)
        from .gradient_hybrid import evolved_mask, run_hybrid
        if resume:
            raise ConfigError("search gradient with gradient.evolve does not resume: run it "
                              "again without --resume (--overwrite)")
        outer = int(evolved_mask(search.layout, grad.evolve).sum())
        evaluator = stage_evaluator(cfg, search, tasks, tokenizer,
                                    cfg.strategy.population_for(outer), mesh, plan, log)
        best = run_hybrid(cfg, search, tasks, grad, evaluator, run_dir, log=log,
                          on_generation=on_generation)
        return finish(cfg, search, evaluator, tasks, tokenizer, best, run_dir, log=log,
                      export=export)
    evaluator = stage_evaluator(cfg, search, tasks, tokenizer, 1, mesh, plan, log)
    seed = cfg.strategy.seed
    key = candidate_keys(seed, 0, [0])  # the run's masks: one draw, kept
    optimizer = optax.adam(grad.learning_rate)
    genome = search.initial_mean()
    opt_state = optimizer.init(genome)
    start, best, passes = 0, None, 0
    if resume and (run_dir / "gradient_state.json").is_file():
        start, genome, opt_state, best, passes = _load_state(run_dir, opt_state)
        log(f"resuming at step {start} of {grad.steps}")
    _truncate_log(run_dir / "log.jsonl", start)
    seq_len = max(t.seq_len for t in tasks)
    val_batches = max(len(t.eval_chunks("validation")) for t in tasks)
    log(f"gradient: Adam (lr {grad.learning_rate}) on {grad.loss}; {search.num_dims} genes, "
        f"{grad.steps} steps")
    for step in range(start, grad.steps):
        began = time.perf_counter()
        rows = loss_rows(tasks, step_rows(tasks, seed, step, grad.batch), "fitness", seq_len,
                         grad.loss)
        loss, grads = loss_and_grad(search.model, grad.loss, search.weights, genome, key[0], rows)
        loss, grads = float(loss), np.asarray(grads)
        passes += 1
        line = {"generation": step, "step": step, "population": 1, "loss": loss,
                "fitness": {"best": -loss, "mean": -loss},
                "grad_norm": float(np.linalg.norm(grads)), "genome": genome.tolist()}
        if step % grad.validate_every == 0 or step == grad.steps - 1:
            val = evaluator.split_scores(genome[None], key, "validation")
            passes += val_batches
            val_score = float(combine(tasks, val)[0])
            best = keep_best(best, run_dir, val_score, step, 0, -loss, genome, key[0])
            line["generation_best"] = {"candidate": 0, "fitness": -loss, "validation": val_score,
                                       "genome": genome.tolist(),
                                       "validation_tasks": {n: {m: float(v[0]) for m, v in
                                                                s.items()} for n, s in val.items()}}
        else:
            line["generation_best"] = {"candidate": 0, "fitness": -loss, "validation": None,
                                       "genome": genome.tolist()}
        if np.isfinite(grads).all():
            updates, opt_state = optimizer.update(grads, opt_state, genome)
            genome = np.clip(np.asarray(optax.apply_updates(genome, updates)), 0.0, 1.0)
        else:
            log(f"warning: step {step}: non-finite gradient, step skipped")
        line.update({"forward_passes": passes, "seconds": round(time.perf_counter() - began, 4),
                     "best_so_far": None if best is None else {
                         "generation": best.generation, "candidate": 0,
                         "validation": best.validation}})
        append_log(run_dir, line)
        _save_state(run_dir, step + 1, genome, opt_state, best, passes)
        log(f"step {step}: loss {loss:.5f}, |grad| {line['grad_norm']:.4g}")
        if on_generation is not None:
            on_generation(step, line)
    if best is None:
        raise ConfigError(f"{run_dir}: no step had a finite validation score")
    return finish(cfg, search, evaluator, tasks, tokenizer, best, run_dir, log=log, export=export)
