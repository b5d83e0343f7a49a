"""Describe a model dir from its config and safetensors headers, without reading tensor data."""

from __future__ import annotations

import math
from pathlib import Path

from .checkpoint import TOKENIZER_FILES, TensorReader
from .vlm.checkpoint import is_vlm_dir
from .vlm.info import vlm_info


def model_info(path: str | Path) -> dict[str, object]:
    """A text LM's description; a LLaVA dir's describes both towers (vlm/info.py)."""
    if is_vlm_dir(path):
        return vlm_info(path, reader_info)
    return reader_info(TensorReader(path))


def reader_info(reader: TensorReader) -> dict[str, object]:
    reader.check()
    spec = reader.spec
    names = [n for n in reader.names() if not (n == "lm_head.weight" and spec.tie_word_embeddings)]
    params = sum(math.prod(reader.shape(n)) for n in names)
    dtypes = sorted({reader.dtype(n) for n in names})
    tokenizer = [f for f in TOKENIZER_FILES if (reader.root / f).is_file() and "token" in f]
    return {
        "architecture": spec.architecture,
        "layers": spec.num_layers,
        "hidden_size": spec.hidden_size,
        "heads": f"{spec.num_heads} query / {spec.num_kv_heads} key-value, head_dim {spec.head_dim}",
        "vocab_size": spec.vocab_size,
        "parameters": f"{params:,}",
        "dtype": ", ".join(dtypes),
        "tied_embed": spec.tie_word_embeddings,
        "sliding": (f"window {spec.sliding_window} on {sum(spec.sliding_layers)} layers"
                    if spec.sliding_window else "none"),
        "tokenizer": ", ".join(tokenizer) if tokenizer else "none",
    }
