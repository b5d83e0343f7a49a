"""Write a LLaVA / LLaVA-NeXT HF dir from a language tower: the merged (or evolved, or DFS-folded)
language model in place of the VLM's own, the VLM's frozen vision tower, projector and image
newline copied tensor for tensor, its config with the new text config, and every processor,
tokenizer and template file of the VLM dir. Written atomically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax.numpy as jnp

from ..arch import ModelSpec
from ..checkpoint import Checkpoint, hf_state_dict, output_config
from ..errors import CheckpointError
from ..fileio import DEFAULT_SHARD_SIZE, atomic_dir, parse_size, write_safetensors_shards
from .checkpoint import open_vlm
from .spec import text_config

_WEIGHT_FILES = ("config.json", "model.safetensors.index.json")


def _check_fits(vlm_spec, text_spec: ModelSpec, where) -> None:
    old = vlm_spec.text
    for key in ("hidden_size", "vocab_size"):
        if getattr(old, key) != getattr(text_spec, key):
            raise CheckpointError(f"{where}: the language tower's {key} {getattr(text_spec, key)} "
                                  f"does not fit the VLM's ({getattr(old, key)})")


def vlm_config(cfg: dict, tcfg: dict, dtype) -> dict:
    """The VLM's config.json with `tcfg` (the language tower's text-LM config) as text_config."""
    out = dict(cfg)
    tcfg = dict(tcfg)
    if "architectures" not in cfg.get("text_config", {}):
        tcfg.pop("architectures", None)
    out["text_config"] = tcfg
    name = jnp.dtype(dtype).name
    for key in ("dtype", "torch_dtype"):
        if key in out or key == "dtype":
            out[key] = name
    return out


def write_vlm_dir(vlm_dir, language_params: dict, text_spec: ModelSpec, out_dir, *,
                  overwrite: bool = False, shard_size: int | str = DEFAULT_SHARD_SIZE,
                  extra_files: dict[str, str] | None = None) -> Path:
    """A LLaVA dir at `out_dir`: `language_params` (a text Checkpoint's params laid out as
    `text_spec`) + the frozen rest of `vlm_dir`. `extra_files`: name -> text written beside."""
    _check_fits(open_vlm(vlm_dir)[2], text_spec, vlm_dir)
    language = Checkpoint(spec=text_spec, params=language_params, config={})
    cfg = open_vlm(vlm_dir)[0].config
    return write_vlm_streaming(
        vlm_dir, hf_state_dict(language),
        lambda: output_config(text_config(cfg, "config.json"), text_spec, language.dtype),
        out_dir, overwrite=overwrite, shard_size=shard_size, extra_files=extra_files)


def write_vlm_streaming(vlm_dir, text_tensors, text_cfg, out_dir, *, overwrite: bool = False,
                        shard_size: int | str = DEFAULT_SHARD_SIZE,
                        extra_files: dict[str, str] | None = None) -> Path:
    """The one VLM-dir writer: `text_tensors` ((text-LM name, array) pairs, streamed: a merge
    yields them one at a time) stored under `vlm_dir`'s language names, then every other tensor
    of `vlm_dir` copied; `text_cfg` (a dict, or a function called once the tensors are written)
    becomes the config's text_config; processor, tokenizer and template files copied."""
    raw, layout, _ = open_vlm(vlm_dir)
    limit = parse_size(shard_size)
    dtypes = []

    def tensors():
        for name, array in text_tensors:
            dtypes.append(array.dtype)
            yield layout.stored_name(name), array
        for name in raw.names():
            if layout.text_name(name) is None:
                yield name, raw.read(name)

    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_safetensors_shards(tensors(), tmp, limit)
        tcfg = text_cfg() if callable(text_cfg) else dict(text_cfg)
        config = vlm_config(raw.config, tcfg, dtypes[0] if dtypes else "float32")
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for item in raw.root.iterdir():
            if item.is_file() and item.name not in _WEIGHT_FILES and not item.name.endswith(
                    ".safetensors"):
                shutil.copyfile(item, tmp / item.name)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
    return Path(out_dir)
