"""lm-eval's requests as token ids, exactly as lm-eval's `hf` backend (`HFLM`) makes them: the
context/continuation split and empty-context rule (lm-eval's own `TemplateLM.loglikelihood`),
BOS handling, rolling windows, left-truncated generation prompts, stop strings and the text
post-processing of generations. The lm-eval model (`lm_eval.py`) scores these ids with one
checkpoint; the `lm_eval` evolve task type (`evolve/lm_eval_task.py`) with a whole population.
"""

from __future__ import annotations

import json
from pathlib import Path

from .chat import render_chat
from .errors import ConfigError, EvomergeError

try:
    from lm_eval import utils as _lm_utils
    from lm_eval.api.model import TemplateLM
    from lm_eval.models.utils import (handle_stop_sequences, has_bos_prefix, normalize_gen_kwargs,
                                      postprocess_generated_text)
except ImportError as _exc:  # the extra is optional: say how to get it, in one line
    raise EvomergeError(f"lm-eval is not installed ({_exc}); install it with "
                        "pip install 'evomerge-jax[lm-eval]' (lm-eval==0.4.13)") from None


def eos_ids_of(tokenizer, root: Path | None) -> tuple[int, ...]:
    """The tokenizer's EOS plus generation_config.json's (HF's generate stops on both)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    gen = None if root is None else Path(root) / "generation_config.json"
    if gen is not None and gen.is_file():
        extra = json.loads(gen.read_text()).get("eos_token_id")
        ids += [extra] if isinstance(extra, int) else list(extra or [])
    return tuple(dict.fromkeys(int(i) for i in ids))


class HFTokenization(TemplateLM):
    """The tokenizer side of an lm-eval model. `loglikelihood(instances)` returns each request's
    (context ids, continuation ids) pair; a subclass that scores overrides `_loglikelihood_tokens`
    (lm_eval.EvomergeLM)."""

    def __init__(self, tokenizer, root: Path | None, max_length: int, max_gen_toks: int = 256,
                 add_bos_token: bool | None = None):
        super().__init__()
        self.tokenizer = tokenizer
        self._max_length, self._max_gen_toks = int(max_length), int(max_gen_toks)
        self.add_bos_token = add_bos_token
        self.eos_ids = eos_ids_of(tokenizer, root)
        self.pad_id = (tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                       else self.eos_ids[0])

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        return render_chat(self.tokenizer, chat_history, add_generation_prompt)

    def tok_encode(self, string: str, add_special_tokens: bool | None = None,
                   left_truncate_len: int | None = None, **kwargs) -> list[int]:
        if add_special_tokens is not None:
            special = {"add_special_tokens": add_special_tokens}
        elif has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special = {"add_special_tokens": False}
        else:
            special = {} if self.add_bos_token is None else {
                "add_special_tokens": self.add_bos_token}
        ids = self.tokenizer.encode(string, **special)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # --- requests as ids ----------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        return [(list(context), list(continuation)) for _, context, continuation in requests]

    def rolling_pairs(self, string: str) -> list[tuple[list[int], list[int]]]:
        """The hf backend's disjoint windows of max_length tokens over a whole string, as
        (context, continuation) pairs (the first predicted from the prefix token)."""
        return [_lm_utils.make_disjoint_window(window)
                for window in _lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(string), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)]

    def generation_settings(self, gen_kwargs: dict) -> tuple[list[str], int]:
        """(stop strings with EOS's text, max_gen_toks) of a generate_until request; sampling is
        refused (decoding is greedy)."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise ConfigError("the evomerge lm-eval model decodes greedily only: the task asks "
                              "for sampling (do_sample/temperature)")
        max_gen_toks = int(kwargs.pop("max_gen_toks"))
        if self.max_length - max_gen_toks < 1:
            raise ConfigError(f"max_gen_toks {max_gen_toks} leaves no room for a prompt in "
                              f"max_length {self.max_length}")
        return until, max_gen_toks

    def generation_prompt_ids(self, context: str, max_ctx_len: int) -> list[int]:
        """A generation prompt's ids as the hf backend's tok_batch_encode makes them (BOS unless
        the text starts with it), its last max_ctx_len kept."""
        special = {}
        if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
            special = {"add_special_tokens": False}
        elif self.add_bos_token is not None:
            special = {"add_special_tokens": self.add_bos_token}
        return self.tokenizer.encode(context, **special)[-max_ctx_len:]

    def generated_text(self, new_ids, until: list[str]) -> str:
        """Decoded new tokens, cut at the first stop string (the hf backend's post-processing)."""
        return postprocess_generated_text(self.tok_decode(list(new_ids)), stop=until,
                                          think_end_token=None)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise EvomergeError("HFTokenization only tokenizes; use lm_eval.EvomergeLM to score")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise EvomergeError("HFTokenization only tokenizes; use lm_eval.EvomergeLM to generate")


_MANAGERS: dict = {}


def task_manager(include_path, names):
    """An lm-eval TaskManager that knows every name in `names`, cached per process: the include
    path's own tasks alone when they are all there (indexing lm-eval's thousands of built-in task
    YAMLs takes tens of seconds), else the include path with the built-ins."""
    from lm_eval.tasks import TaskManager

    include = None if include_path is None else str(include_path)
    manager = None
    for defaults in ((False, True) if include is not None else (True,)):
        key = (include, defaults)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=include, include_defaults=defaults)
        manager = _MANAGERS[key]
        if all(manager.match_tasks([name]) for name in names):
            break
    return manager
