"""An lm-evaluation-harness 0.4 model backed by the engine: any checkpoint `load` reads, scored on
lm-eval tasks (`loglikelihood`, `loglikelihood_rolling`, greedy `generate_until`, chat templates).

Tokenization follows lm-eval's `hf` backend (`HFLM`) step for step (the context/continuation
split, BOS handling, rolling windows, left truncation, stop strings), so the two score the same
tokens; only the forward differs. Rows are padded as our forward pads them (right padding for
scoring, left padding for generation) to power-of-two lengths and a fixed batch, so that a run
compiles a few shapes, not one per request. Registered with lm-eval as model `evomerge`.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoint import load
from .errors import ConfigError, EvomergeError
from .fileio import atomic_write_text
from .generation import greedy_generate
from .lm_eval_tokens import HFTokenization, task_manager  # (raises: lm-eval missing)
from .model import forward

try:
    import lm_eval as _lm_eval
    from lm_eval import utils as _lm_utils
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import resolve_max_length
except ImportError as _exc:  # the extra is optional: say how to get it, in one line
    raise EvomergeError(f"lm-eval is not installed ({_exc}); install it with "
                        "pip install 'evomerge-jax[lm-eval]' (lm-eval==0.4.13)") from None

MIN_BUCKET = 16


def bucket(n: int, cap: int | None = None) -> int:
    """The padded length for n tokens: the next power of two, at least MIN_BUCKET, at most cap
    (when n fits under it)."""
    size = max(MIN_BUCKET, 1 << max(0, n - 1).bit_length())
    return max(n, min(size, cap)) if cap else size


@partial(jax.jit, static_argnames=("spec",))
def continuation_scores(params, spec, tokens_bs, mask_bs, targets_bs, scored_bs):
    """Per row: the summed log-probability of the targets at the scored positions, and whether
    every scored target is the argmax (lm-eval's `is_greedy`)."""
    logits = forward(params, spec, tokens_bs, mask_bs)
    logp = jax.nn.log_softmax(logits, axis=-1)
    target_logp = jnp.take_along_axis(logp, targets_bs[..., None], axis=-1)[..., 0]
    greedy = jnp.argmax(logits, axis=-1) == targets_bs
    scored = scored_bs.astype(bool)
    return (jnp.sum(jnp.where(scored, target_logp, 0.0), axis=-1),
            jnp.all(greedy | ~scored, axis=-1))


@register_model("evomerge")
class EvomergeLM(HFTokenization):
    """lm-eval model args: `pretrained` (a model dir), `dtype` (float32, float16, bfloat16; default
    the checkpoint's), `batch_size` (rows per device call, default 8), `max_length` (default as
    the hf backend resolves it), `max_gen_toks` (default 256), `add_bos_token`. lm-eval's
    `device` and `max_batch_size` are accepted and ignored (JAX places the arrays). Tokenization
    is `HFTokenization`'s (lm_eval_tokens.py)."""

    _DEFAULT_MAX_LENGTH = 2048

    def __init__(self, pretrained, dtype: str | None = None, batch_size: int | str = 8,
                 max_length: int | None = None, max_gen_toks: int = 256,
                 add_bos_token: bool | None = None, device: str | None = None,
                 max_batch_size: int | None = None, **unknown):
        if unknown:  # a typo in model_args must not pass silently
            raise ConfigError(f"evomerge lm-eval model: unknown model_args "
                              f"{', '.join(sorted(unknown))} (known: pretrained, dtype, batch_size, "
                              "max_length, max_gen_toks, add_bos_token)")
        del device, max_batch_size  # lm-eval passes them; JAX places arrays on its own devices
        from transformers import AutoConfig, AutoTokenizer

        ckpt = load(pretrained, dtype=None if dtype in (None, "auto") else str(dtype))
        root = Path(pretrained)
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(root))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{root}: no usable tokenizer ({exc})") from None
        max_length = int(max_length) if max_length else resolve_max_length(
            AutoConfig.from_pretrained(str(root)), tokenizer, default=self._DEFAULT_MAX_LENGTH)
        super().__init__(tokenizer, root, max_length, max_gen_toks, add_bos_token)
        self.ckpt = ckpt
        if batch_size in ("auto", None):
            batch_size = 8
        self._batch_size = int(str(batch_size).split(":")[0])
        if self._batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")

    @property
    def batch_size(self) -> int:
        return self._batch_size

    # --- scoring ----------------------------------------------------------------------------
    def score_token_pairs(self, pairs: list[tuple[list[int], list[int]]]
                          ) -> list[tuple[float, bool]]:
        """(log P(continuation | context), is_greedy) per (context ids, continuation ids) pair.
        Rows longer than max_length + 1 lose tokens on the left, as in the hf backend."""
        rows = []
        for context, continuation in pairs:
            if not context or not continuation:
                raise EvomergeError("lm-eval request with an empty context or continuation")
            whole = (list(context) + list(continuation))[-(self.max_length + 1):]
            rows.append((whole[:-1], whole[1:], min(len(continuation), len(whole) - 1)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            width = bucket(len(rows[chunk[0]][0]), self.max_length)
            shape = (self.batch_size, width)
            tokens, targets = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
            mask, scored = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
            mask[:, 0] = 1  # filler rows see one token: no all-masked softmax
            for r, i in enumerate(chunk):
                inp, tgt, n_cont = rows[i]
                tokens[r, :len(inp)], targets[r, :len(inp)], mask[r, :len(inp)] = inp, tgt, 1
                scored[r, len(inp) - n_cont:len(inp)] = 1
            logp, greedy = continuation_scores(self.ckpt.params, self.ckpt.spec, tokens, mask,
                                               targets, scored)
            logp, greedy = np.asarray(logp), np.asarray(greedy)
            for r, i in enumerate(chunk):
                out[i] = (float(logp[r]), bool(greedy[r]))
        return out

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        scores = self.score_token_pairs([(ctx, cont) for _, ctx, cont in requests])
        for (key, _, _), score in zip(requests, scores):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, score)
        return scores

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Sum of token log-likelihoods of each whole string, over the hf backend's disjoint
        windows of max_length tokens (the first predicted from the prefix token)."""
        windows, owner = [], []
        for index, request in enumerate(requests):
            (string,) = request.args
            pairs = self.rolling_pairs(string)
            windows += pairs
            owner += [index] * len(pairs)
        totals = [0.0] * len(requests)
        for index, (logp, _) in zip(owner, self.score_token_pairs(windows)):
            totals[index] += logp
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # --- generation -------------------------------------------------------------------------
    def _encode_left_padded(self, contexts: list[str], max_ctx_len: int):
        """Left-padded ids and mask (each row as `generation_prompt_ids` encodes it), widened on
        the left to a bucketed width and filled to batch_size rows."""
        encoded = [self.generation_prompt_ids(c, max_ctx_len) for c in contexts]
        width = bucket(max(len(e) for e in encoded), max_ctx_len)
        tokens = np.full((self.batch_size, width), self.pad_id, np.int32)
        mask = np.zeros((self.batch_size, width), np.int32)
        for r in range(self.batch_size):
            ids = encoded[min(r, len(encoded) - 1)]  # filler rows repeat the last prompt
            tokens[r, width - len(ids):], mask[r, width - len(ids):] = ids, 1
        return tokens, mask

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuations, cut at the first stop string (the request's `until` and EOS)."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str),
                              []).append(index)
        out: list = [None] * len(requests)
        for indices in groups.values():
            until, max_gen_toks = self.generation_settings(requests[indices[0]].args[1])
            max_ctx_len = self.max_length - max_gen_toks
            indices = sorted(indices, key=lambda i: -len(self.tok_encode(requests[i].args[0])))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                tokens, mask = self._encode_left_padded([requests[i].args[0] for i in chunk],
                                                        max_ctx_len)
                new = np.asarray(greedy_generate(
                    self.ckpt.params, self.ckpt.spec, jnp.asarray(tokens), jnp.asarray(mask),
                    max_new_tokens=max_gen_toks, eos_ids=self.eos_ids, pad_id=self.pad_id))
                for r, i in enumerate(chunk):
                    text = self.generated_text(new[r].tolist(), until)
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out


def run_lm_eval(model_dir, tasks: list[str], *, include_path=None, limit: int | None = None,
                apply_chat_template: bool = False, output=None, batch_size: int = 8,
                dtype: str | None = None, log=print) -> dict:
    """`evomerge eval MODEL_DIR --lm-eval TASKS`: lm-eval's simple_evaluate over the engine's
    model; prints lm-eval's table and writes its results JSON (atomically) to `output`."""
    if include_path is not None and not Path(include_path).is_dir():
        raise ConfigError(f"--include-path {include_path}: no such directory")
    manager = task_manager(include_path, list(tasks))
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise ConfigError(f"unknown lm-eval task(s): {', '.join(unknown)} (see `lm-eval ls "
                          "tasks`; local YAML tasks need --include-path)")
    model = EvomergeLM(str(model_dir), dtype=dtype, batch_size=batch_size)
    results = _lm_eval.simple_evaluate(model=model, tasks=list(tasks), limit=limit,
                                       apply_chat_template=apply_chat_template,
                                       task_manager=manager, log_samples=False)
    log(_lm_utils.make_table(results))
    if output is not None:
        atomic_write_text(output, json.dumps(results, indent=2, default=str) + "\n")
    return results
