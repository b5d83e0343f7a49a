"""The differentiable losses of `search: gradient`: a PS genome -> one scalar, through the merge
inside the layer scan and the forward pass (the population pass's own `PSModel`, with P = 1).

- `nll`: each task's mean negative log-likelihood of its targets (per scored token), weighted by
  the task's `weight`: the supervised loss.
- `entropy`: AdaMerging's (Yang et al. 2024) unsupervised loss: the entropy of the next-token
  distribution after each prompt (the first scored position, whose input is the prompt's last
  token: by causality it sees the prompt alone, never the target), the mean over rows, weighted
  by the task's `weight`.

Rows of every task are concatenated into one batch (`loss_rows`); `row_weight` carries each row's
share of its task's mean, so the loss is one sum.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

LOSSES = ("nll", "entropy")


def loss_rows(tasks, rows_per_task, split: str, seq_len: int, loss: str) -> dict:
    """Host arrays of one step: tokens, mask, labels, scored [R, S] and row_weight [R]."""
    parts = []
    for task, rows in zip(tasks, rows_per_task):
        batch = task.batch(split, rows)
        valid = np.asarray(batch["valid"], bool)
        scored = np.asarray(batch["scored"], bool) & valid[:, None]
        if loss == "nll":
            per_row = scored.sum(-1).astype(np.float64)  # tokens per row
        else:
            per_row = valid.astype(np.float64)  # one position per row
        total = per_row.sum()
        weight = np.where(per_row > 0, task.cfg.weight / max(total, 1.0), 0.0)
        pad = lambda x: np.pad(x, ((0, 0), (0, seq_len - x.shape[-1])))  # noqa: E731
        parts.append({"tokens": pad(np.asarray(batch["tokens"])),
                      "mask": pad(np.asarray(batch["mask"])),
                      "labels": pad(np.asarray(batch["labels"])),
                      "scored": pad(scored), "row_weight": weight.astype(np.float32)})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def batch_loss(logits_bsv, rows: dict, loss: str):
    """The weighted loss of one batch's logits (float32)."""
    logp = jax.nn.log_softmax(logits_bsv.astype(jnp.float32), axis=-1)
    scored = rows["scored"]
    if loss == "nll":
        token = jnp.take_along_axis(logp, rows["labels"][..., None], axis=-1)[..., 0]
        per_row = -jnp.sum(jnp.where(scored, token, 0.0), axis=-1)
    else:
        first = jnp.argmax(scored, axis=-1)  # the first scored position of each row
        at = jnp.take_along_axis(logp, first[:, None, None], axis=1)[:, 0]  # [B, V]
        per_row = jnp.where(jnp.any(scored, -1), -jnp.sum(jnp.exp(at) * at, axis=-1), 0.0)
    return jnp.sum(rows["row_weight"] * per_row)


@partial(jax.jit, static_argnames=("model", "loss"))
def loss_and_grad(model, loss: str, weights, genome_d, key_2, rows):
    """(loss, d loss / d genes [D]) of one genome: `model` is a PSModel, its masks drawn from
    `key_2` (fixed for the run)."""

    def of(genome):
        cand = model.candidates(genome[None], key_2[None])
        h = model.hidden(weights, cand, rows["tokens"], rows["mask"])
        return model.head_map(weights, cand, h, lambda logits: batch_loss(logits, rows, loss))[0]

    return jax.value_and_grad(of)(genome_d)


def step_rows(tasks, seed: int, step: int, batch: int | None) -> list[np.ndarray]:
    """Each task's fitness rows of step `step` (a seeded draw of `batch` rows, or all rows in
    order padded with -1 when the split has no more)."""
    out = []
    for i, task in enumerate(tasks):
        n, size = task.splits["fitness"].size, batch or task.cfg.batch_size
        if n <= size:
            out.append(np.concatenate([np.arange(n), np.full(size - n, -1)]))
        else:
            rng = np.random.default_rng([seed, i, step])
            out.append(np.sort(rng.choice(n, size, replace=False)))
    return out
