"""Build a small word-level tokenizer dir that `transformers.AutoTokenizer` loads offline.

Tiny test and demo models have tiny vocabularies; a word-level tokenizer over whitespace-separated
words keeps their token ids readable ("3 + 4 = 7" is five tokens) and needs no training. The files
written are the two a fast tokenizer needs: `tokenizer.json` (the `tokenizers` pipeline) and
`tokenizer_config.json` (which class to load and the special tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from .errors import ConfigError

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: pad, bos, eos, unk


def word_vocab(words: Sequence[str], vocab_size: int | None = None) -> dict[str, int]:
    """Specials first (ids 0-3, matching tiny models' pad=0, bos=1, eos=2), then `words` in order,
    then filler tokens `<extra_i>` up to `vocab_size` so ids cover the whole embedding table."""
    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in words:
        if any(ch.isspace() for ch in word) or not word:
            raise ConfigError(f"tokenizer word {word!r} is empty or contains whitespace")
        vocab.setdefault(word, len(vocab))
    if vocab_size is not None:
        if len(vocab) > vocab_size:
            raise ConfigError(f"{len(vocab)} tokens do not fit a vocabulary of {vocab_size}")
        for i in range(len(vocab), vocab_size):
            vocab[f"<extra_{i}>"] = i
    return vocab


def build_word_tokenizer(words: Sequence[str], out_dir: str | Path, *,
                         vocab_size: int | None = None, add_bos: bool = True) -> Path:
    """Write tokenizer.json + tokenizer_config.json into `out_dir` (created if needed).

    Text is split on whitespace and punctuation boundaries are not split further, so every word of
    `words` is one token and anything else is `<unk>`. Decoding joins tokens with single spaces.
    With `add_bos`, encoding prepends `<s>` (as Llama tokenizers do).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = word_vocab(words, vocab_size)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])])
    tok.add_special_tokens(list(SPECIALS))
    tok.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>",
        "add_bos_token": add_bos, "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
