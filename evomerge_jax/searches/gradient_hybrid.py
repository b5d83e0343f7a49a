"""`search: gradient` with `gradient.evolve`: a hybrid. The genes of the parameters named there
(densities, or any gene the loss cannot move) are evolved by the `strategy` section's evosax
algorithm; around each candidate, the other genes are learned by Adam as in the plain gradient
search (searches/gradient.py): `gradient.steps` steps from `strategy.mean`, the candidate's evolved
genes held fixed (their gradient masked). The trained candidates of a generation are scored in one
population pass on the fitness split (the weighted task sum, as PS), which is what the strategy is
told; each generation's top is scored on validation and the best there is the run's result.

Masks (DARE, DELLA) come from one key for the whole run (`candidate_keys(seed, 0, 0)`), so a
candidate's masks depend on its densities only and the export is the model that was trained. Each
candidate's step s uses the rows of step s (the same batches for every candidate, generation after
generation). One log line per generation; `forward_passes` counts candidate passes over a batch
(P·steps gradient steps, each with its backward pass, P fitness batches, the validation batches).
Resume is not supported for the hybrid (a `--resume` is refused).
"""

from __future__ import annotations

import time

import numpy as np
import optax

from ..errors import ConfigError
from ..evolve.evaluate import combine
from ..evolve.gradient_loss import loss_and_grad, loss_rows, step_rows
from ..evolve.loop import _summary
from ..evolve.strategy import build_strategy, losses
from ..parallel.seeds import candidate_keys
from ..ps.genome import clip
from .own_loop import append_log, keep_best, validate_top


def evolved_mask(layout, names) -> np.ndarray:
    """[D] bool: the genes of the parameters `names` (the ones the strategy evolves)."""
    blocks = {n: np.full(layout.block_shape(i), n in names)
              for i, n in enumerate(layout.params)}
    return layout.flatten(blocks).astype(bool)


def train(search, grad, tasks, genome, fixed, key, seed: int) -> np.ndarray:
    """`grad.steps` Adam steps from `genome` on the genes where `fixed` is False."""
    optimizer = optax.adam(grad.learning_rate)
    state = optimizer.init(genome)
    seq_len = max(t.seq_len for t in tasks)
    for step in range(grad.steps):
        rows = loss_rows(tasks, step_rows(tasks, seed, step, grad.batch), "fitness", seq_len,
                         grad.loss)
        _, grads = loss_and_grad(search.model, grad.loss, search.weights, genome, key, rows)
        grads = np.where(fixed, 0.0, np.asarray(grads)).astype(np.float32)
        if not np.isfinite(grads).all():
            break
        updates, state = optimizer.update(grads, state, genome)
        genome = np.clip(np.asarray(optax.apply_updates(genome, updates)), 0.0, 1.0)
    return genome


def run_hybrid(cfg, search, tasks, grad, evaluator, run_dir, *, log=print, on_generation=None):
    """The hybrid's loop; returns the best (`Best`)."""
    fixed = evolved_mask(search.layout, grad.evolve)
    strategy = build_strategy(cfg.strategy, int(fixed.sum()))
    seed, start = cfg.strategy.seed, search.initial_mean()
    mean = start[fixed]
    key = candidate_keys(seed, 0, [0])
    state, best, passes = strategy.init(seed, mean), None, 0
    val_batches = max(len(t.eval_chunks("validation")) for t in tasks)
    fit_batches = max(len(t.eval_chunks("fitness")) for t in tasks)
    log(f"gradient hybrid: {cfg.strategy.name} evolves {', '.join(grad.evolve)} "
        f"({int(fixed.sum())} genes), Adam learns the other {int((~fixed).sum())} in "
        f"{grad.steps} steps per candidate; {cfg.strategy.generations} generations")
    for generation in range(cfg.strategy.generations):
        began = time.perf_counter()
        population, asked = strategy.ask(seed, generation, state, mean)
        outer, _ = clip(population)
        genomes = np.repeat(start[None], len(outer), 0)
        genomes[:, fixed] = outer
        genomes = np.stack([train(search, grad, tasks, g, fixed, key[0], seed) for g in genomes])
        keys = np.repeat(key, len(genomes), 0)
        scores = evaluator.split_scores(genomes, keys, "fitness")
        total = combine(tasks, scores)
        loss, _ = losses(total, np.isfinite(genomes).all(1))
        state = strategy.tell(seed, generation, asked, population, loss)
        top, val_score = validate_top(evaluator, tasks, genomes, keys, total)
        best = keep_best(best, run_dir, val_score, generation, top, total[top], genomes[top],
                         keys[top])
        passes += len(genomes) * (grad.steps + fit_batches) + val_batches
        line = {"generation": generation, "population": len(genomes),
                "seconds": round(time.perf_counter() - began, 4), "fitness": _summary(total),
                "evolved_genes": outer.tolist(), "forward_passes": passes,
                "generation_best": {"candidate": top, "fitness": float(total[top]),
                                    "validation": val_score, "genome": genomes[top].tolist()},
                "best_so_far": None if best is None else {
                    "generation": best.generation, "candidate": best.candidate,
                    "validation": best.validation}}
        append_log(run_dir, line)
        log(f"generation {generation}: best {float(np.nanmax(total)):.4f}, validation of the top "
            f"{val_score:.4f}")
        if on_generation is not None:
            on_generation(generation, line)
    if best is None:
        raise ConfigError(f"{run_dir}: no candidate had a finite validation score")
    return best
