"""The world's tokenizer as Hugging Face files, built with the `tokenizers` library.

One token per word: a WordLevel model over `world.VOCAB` after splitting on whitespace, so token ids
are the vocabulary's order and `tokenize(prompt + " " + target)` is `tokenize(prompt)` followed by
`tokenize(target)`. Encoding prepends `<bos>`, as a Llama tokenizer does; the end token is not added
(the task loader appends `eos_token_id` to targets). Decoding joins the words with spaces, which
gives back the world's sentences exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from . import world as w

TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast",
    "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
    "add_bos_token": True, "add_eos_token": False, "model_max_length": 64,
    "clean_up_tokenization_spaces": False,
}


def build_tokenizer() -> Tokenizer:
    vocab = {tok: i for i, tok in enumerate(w.VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # WordLevel has no decoder of its own; WordPiece's with no prefix joins tokens with spaces.
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])])
    tok.add_special_tokens(list(w.SPECIALS))
    return tok


def write_tokenizer_files(dest: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json into `dest`."""
    build_tokenizer().save(str(dest / "tokenizer.json"))
    (dest / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    names = ("bos_token", "eos_token", "pad_token", "unk_token")
    specials = {k: TOKENIZER_CONFIG[k] for k in names}
    (dest / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
