"""A source dir of a search: a text LM, or a LLaVA dir standing for its language tower (issue 15:
the VLM being evolved may be one of its own sources). Every search reads its sources' configs and
tensors through these functions, so a VLM dir is read as the text LM inside it."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import Checkpoint, TensorReader, load_text, read_config


def source_reader(path: str | Path) -> TensorReader:
    """A reader of the text LM at `path` (a VLM dir: its language tower under text-LM names,
    `vlm.checkpoint.open_reader`)."""
    from .vlm.checkpoint import open_reader  # the vlm package builds on checkpoint.py

    return open_reader(path)


def source_config(path: str | Path):
    """(root, HF config, spec) of the text LM at `path`, as `checkpoint.read_config` (a VLM dir:
    its text config and language spec)."""
    from .vlm.checkpoint import is_vlm_dir

    if is_vlm_dir(path):
        reader = source_reader(path)
        return reader.root, reader.config, reader.spec
    return read_config(path)


def load_source(path: str | Path, dtype: str | None = None) -> Checkpoint:
    """The text LM at `path` (a VLM dir: its language tower) as a `Checkpoint`."""
    return load_text(source_reader(path), dtype)
