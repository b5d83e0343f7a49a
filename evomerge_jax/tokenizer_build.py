"""Build a small word-level tokenizer dir that `transformers.AutoTokenizer` loads offline.

Tiny test and demo models have tiny vocabularies; a word-level tokenizer over whitespace-separated
words keeps their token ids readable ("3 + 4 = 7" is five tokens) and needs no training. The files
written are the two a fast tokenizer needs: `tokenizer.json` (the `tokenizers` pipeline) and
`tokenizer_config.json` (which class to load and the special tokens).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence

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


def write_word_tokenizer(vocab: Mapping[str, int], out_dir: str | Path, *,
                         specials: Sequence[str], bos: str, eos: str, pad: str, unk: str,
                         add_bos: bool = True, model_max_length: int = 1_000_000) -> Path:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`.

    A WordLevel model over `vocab` after splitting on whitespace, so every word is one token (ids
    as given) and anything else is `unk`. Decoding joins tokens with single spaces. With
    `add_bos`, encoding prepends `bos`, as Llama tokenizers do; `eos` is never added.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.WordLevel(vocab=dict(vocab), unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordLevel has no decoder of its own; WordPiece's with no prefix joins tokens with spaces.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])])
    tok.add_special_tokens(list(specials))
    tok.save(str(out / "tokenizer.json"))
    names = {"bos_token": bos, "eos_token": eos, "pad_token": pad, "unk_token": unk}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **names, "add_bos_token": add_bos,
              "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": model_max_length}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(names, indent=2) + "\n")
    return out


def build_word_tokenizer(words: Sequence[str], out_dir: str | Path, *,
                         vocab_size: int | None = None, add_bos: bool = True) -> Path:
    """A tokenizer dir for tiny test models: specials `<pad> <s> </s> <unk>` (ids 0-3), then
    `words`, then fillers up to `vocab_size` (`word_vocab`)."""
    return write_word_tokenizer(word_vocab(words, vocab_size), out_dir, specials=SPECIALS,
                                bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", add_bos=add_bos)
