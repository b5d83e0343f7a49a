"""A source dir of a search: a text LM, or a LLaVA dir standing for its language tower (issue 15:
the VLM being evolved may be one of its own sources). Every search reads its sources' configs and
tensors through these two functions, so a VLM dir is read as the text LM inside it."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import TensorReader, read_config


def _is_vlm(path) -> bool:
    from .vlm.checkpoint import is_vlm_dir  # the vlm package builds on checkpoint.py

    return is_vlm_dir(path)


def source_reader(path: str | Path) -> TensorReader:
    """A reader of the text LM at `path` (a VLM dir: its language tower under text-LM names)."""
    if _is_vlm(path):
        from .vlm.checkpoint import language_reader

        return language_reader(path)
    return TensorReader(path)


def source_config(path: str | Path):
    """(root, HF config, spec) of the text LM at `path`, as `checkpoint.read_config` (a VLM dir:
    its text config and language spec)."""
    if _is_vlm(path):
        reader = source_reader(path)
        return reader.root, reader.config, reader.spec
    return read_config(path)
