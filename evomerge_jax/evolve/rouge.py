"""ROUGE-L for the `generate` task type's `compare: rouge_l` (the EvoVLM paper's fitness, Akiba et
al. 2025 section 4.2), scored by the `rouge-score` library with a pluggable tokenizer.

rouge-score's own tokenizer lowercases and keeps only [a-z0-9] runs: every Japanese character is
dropped, so text in a language without spaces needs another one. `rouge_tokenizer` names it:

- `default`: rouge-score's tokenizer (English; no stemming);
- `whitespace`: the text split on whitespace, case kept;
- `chars`: one token per non-space character (Japanese, Chinese);
- `MODULE:CALLABLE`: any importable function `str -> list[str]` (e.g. a MeCab wrapper).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import lru_cache

BUILTIN_TOKENIZERS = ("default", "whitespace", "chars")


def _whitespace(text: str) -> list[str]:
    return text.split()


def _chars(text: str) -> list[str]:
    return [c for c in text if not c.isspace()]


def resolve_tokenizer(name: str) -> Callable[[str], list[str]] | None:
    """The tokenizing function of `rouge_tokenizer` (None: rouge-score's default); ValueError
    with a one-line reason when `MODULE:CALLABLE` cannot be imported."""
    if name == "default":
        return None
    if name in ("whitespace", "chars"):
        return _whitespace if name == "whitespace" else _chars
    module, sep, attr = name.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"rouge_tokenizer {name!r}: choose {', '.join(BUILTIN_TOKENIZERS)} or "
                         "MODULE:CALLABLE")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"rouge_tokenizer {name!r} cannot be imported ({exc})") from None
    if not callable(fn):
        raise ValueError(f"rouge_tokenizer {name!r} is not callable")
    return fn


class _Tokenizer:
    """The object rouge-score's scorer calls (`tokenize(text) -> list[str]`)."""

    def __init__(self, fn):
        self.fn = fn

    def tokenize(self, text: str) -> list[str]:
        return [str(t) for t in self.fn(text)]


@lru_cache(maxsize=16)
def _scorer(name: str):
    from rouge_score import rouge_scorer  # imported on first use

    fn = resolve_tokenizer(name)
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=None if fn is None else _Tokenizer(fn))


def rouge_l(prediction: str, reference: str, tokenizer: str = "default") -> float:
    """ROUGE-L F-measure of `prediction` against `reference`, in [0, 1]."""
    return float(_scorer(tokenizer).score(reference, prediction)["rougeL"].fmeasure)
