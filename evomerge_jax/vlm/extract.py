"""`evomerge extract-lm`: a VLM's language tower as a plain text-LM HF dir (the text config with
its `architectures`, the tokenizer and chat template files), streamed tensor by tensor."""

from __future__ import annotations

from pathlib import Path

from ..arch import hf_tensor_names
from ..checkpoint import output_config, write_hf_dir
from ..fileio import DEFAULT_SHARD_SIZE
from .checkpoint import language_reader


def extract_language_model(vlm_dir, out_dir, *, overwrite: bool = False,
                           shard_size: int | str = DEFAULT_SHARD_SIZE) -> Path:
    reader = language_reader(vlm_dir)
    reader.check()
    spec = reader.spec
    names = list(hf_tensor_names(spec))
    dtype = reader.dtype(names[0])
    return write_hf_dir(out_dir, ((name, reader.read(name)) for name in names),
                        output_config(reader.config, spec, dtype), tokenizer_from=reader.root,
                        overwrite=overwrite, shard_size=shard_size)
