"""Atomic output dirs and HF-style safetensors sharding.

Everything the engine writes goes through `atomic_dir`: the content is built in a hidden temp dir
beside the target and renamed into place, so a crash or an error leaves either the old target or
the new one, never a half-written mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import jax.numpy as jnp
import numpy as np
from safetensors.flax import save_file

from .errors import CheckpointError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


# Hugging Face's default largest shard file.
DEFAULT_SHARD_SIZE = "5GB"


def parse_size(size: int | str) -> int:
    """'5GB' -> 5e9 bytes (decimal units as HF uses; KiB/MiB/GiB are binary)."""
    if isinstance(size, int):
        if size <= 0:
            raise CheckpointError(f"shard size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(size))
    if not match or match.group(2).upper() not in _UNITS:
        raise CheckpointError(f"cannot read size {size!r}; write it like 5GB, 500MB or 2GiB")
    value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise CheckpointError(f"shard size must be positive, got {size!r}")
    return value


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir; on success rename it to `target` (replacing it only with `overwrite`)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target}: already exists (pass --overwrite to replace it)")
    if target.exists() and not target.is_dir():
        raise CheckpointError(f"{target}: exists and is not a directory")
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
    except OSError as exc:
        raise CheckpointError(f"{parent}: cannot create output dir ({exc})") from None
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file via a temp file and rename, so readers never see half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_safetensors_shards(tensors: Iterable[tuple[str, np.ndarray]], out_dir: Path,
                             limit: int) -> list[str]:
    """Stream (name, array) pairs into shards of at most `limit` bytes (a tensor larger than the
    limit gets a shard of its own). One shard is `model.safetensors`; several are named
    `model-0000i-of-0000N.safetensors` with a `model.safetensors.index.json`."""
    shards: list[dict[str, str]] = []
    pending: dict[str, np.ndarray] = {}
    pending_bytes, total = 0, 0

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            name = f"shard-{len(shards):05d}.tmp"
            save_file({k: jnp.asarray(v) for k, v in pending.items()}, str(out_dir / name),
                      metadata={"format": "pt"})
            shards.append({k: name for k in pending})
            pending, pending_bytes = {}, 0

    for name, array in tensors:
        size = int(array.nbytes)
        if pending and pending_bytes + size > limit:
            flush()
        pending[name] = array
        pending_bytes += size
        total += size
    flush()
    if len(shards) == 1:
        os.replace(out_dir / next(iter(shards[0].values())), out_dir / "model.safetensors")
        return ["model.safetensors"]
    weight_map, files = {}, []
    for i, shard in enumerate(shards):
        final = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        os.replace(out_dir / next(iter(shard.values())), out_dir / final)
        files.append(final)
        weight_map.update({k: final for k in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return files
