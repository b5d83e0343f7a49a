"""Read a Hugging Face model dir into a `Checkpoint` (per-layer tensors stacked on axis 0), and
write one back as HF-style safetensors shards, atomically.

Reading goes through `TensorReader`, which maps every HF tensor name to its file and reads one tensor
at a time; the streaming merge and the exporter use it directly so that no whole model is held.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from .arch import IGNORED_SUFFIXES, ModelSpec, hf_tensor_names
from .errors import CheckpointError, ConfigError
from .families import SUPPORTED_ARCHITECTURES, config_with_num_layers, spec_from_config
from .fileio import DEFAULT_SHARD_SIZE, atomic_dir, parse_size, write_safetensors_shards

DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}
_HEADER_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
                   "chat_template.jinja", "generation_config.json")


@dataclass(frozen=True)
class Checkpoint:
    """A decoder's spec, its parameter pytree (see `arch`), its HF config and where it came from."""

    spec: ModelSpec
    params: dict
    config: dict
    source_dir: Path | None = field(default=None, compare=False)

    @property
    def dtype(self):
        return self.params["embed"].dtype

    def num_parameters(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(self.params))


def read_config(path: str | Path, need_spec: bool = True) -> tuple[Path, dict, ModelSpec | None]:
    """Check a model dir and parse its config.json; errors name the dir and the problem. With
    `need_spec=False` a family the forward does not support gives spec None (merging needs only
    tensor names and shapes)."""
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"{root}: no such model directory")
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory (expected a Hugging Face model dir)")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{root}: no config.json (is this a Hugging Face model dir?)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: cannot read JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    if not need_spec and (cfg.get("architectures") or [None])[0] not in SUPPORTED_ARCHITECTURES:
        return root, cfg, None
    try:
        spec = spec_from_config(cfg, where=str(cfg_path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    return root, cfg, spec


class TensorReader:
    """Lazy access to the tensors of an HF dir: `read(hf_name)` returns a numpy array."""

    def __init__(self, path: str | Path, need_spec: bool = True):
        self.root, self.config, self.spec = read_config(path, need_spec)
        self._handles: dict[Path, object] = {}
        self.stored: dict[str, str] = {}  # name -> the name in the file, where they differ
        self.files = self._weight_map()

    def _weight_map(self) -> dict[str, Path]:
        index = self.root / "model.safetensors.index.json"
        single = self.root / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise CheckpointError(f"{index}: not a safetensors index ({exc})") from None
            return {name: self.root / fname for name, fname in weight_map.items()}
        if single.is_file():
            return {name: single for name in self._open(single).keys()}
        raise CheckpointError(f"{self.root}: no model.safetensors or model.safetensors.index.json")

    def _open(self, file: Path):
        if file not in self._handles:
            if not file.is_file():
                raise CheckpointError(f"{file}: shard named in the index is missing")
            try:
                self._handles[file] = safe_open(str(file), framework="flax")
            except (SafetensorError, OSError, ValueError) as exc:
                raise CheckpointError(f"{file}: corrupt or truncated safetensors file ({exc})") from None
        return self._handles[file]

    def names(self) -> list[str]:
        return list(self.files)

    def _key(self, name: str) -> str:
        return self.stored.get(name, name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._open(self.files[name]).get_slice(self._key(name)).get_shape())

    def dtype(self, name: str) -> str:
        """The stored dtype of a tensor, from the file header (F32 -> float32, ...)."""
        raw = self._open(self.files[name]).get_slice(self._key(name)).get_dtype()
        return _HEADER_DTYPES.get(raw, raw)

    def read(self, name: str, dtype=None) -> np.ndarray:
        if name not in self.files:
            raise CheckpointError(f"{self.root}: tensor {name!r} is missing")
        file = self.files[name]
        try:
            value = self._open(file).get_tensor(self._key(name))
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{file}: cannot read tensor {name!r} ({exc})") from None
        return np.asarray(value if dtype is None else value.astype(dtype))

    def read_slice(self, name: str, index: tuple, dtype=None) -> np.ndarray:
        """The block `index` (a tuple of slices) of a tensor, reading only those bytes (the
        sharded loader: each host reads the blocks its devices hold)."""
        if name not in self.files:
            raise CheckpointError(f"{self.root}: tensor {name!r} is missing")
        file = self.files[name]
        try:
            value = self._open(file).get_slice(self._key(name))[tuple(index)]
        except (SafetensorError, OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{file}: cannot read tensor {name!r} ({exc})") from None
        return np.asarray(value if dtype is None else value.astype(dtype))

    def check(self) -> None:
        """Report every missing, unexpected or misshapen tensor at once."""
        expected = hf_tensor_names(self.spec)
        problems = []
        for name, (short, layer) in expected.items():
            if name not in self.files:
                problems.append(f"missing tensor {name!r}")
                continue
            want = self.spec.global_shape(short) if layer is None else self.spec.layer_shape(short)
            got = self.shape(name)
            if got != want:
                problems.append(f"tensor {name!r} has shape {list(got)}, expected {list(want)}")
            if self.dtype(name) not in _HEADER_DTYPES.values():
                problems.append(f"tensor {name!r} has dtype {self.dtype(name)}, "
                                "expected float32, float16 or bfloat16")
        for name in self.files:
            tied_head = name == "lm_head.weight" and self.spec.tie_word_embeddings
            if name not in expected and not tied_head and not name.endswith(IGNORED_SUFFIXES):
                problems.append(f"unexpected tensor {name!r} for {self.spec.architecture}")
        if problems:
            raise CheckpointError(f"{self.root}: " + "; ".join(problems))


def load(path: str | Path, dtype: str | None = None) -> Checkpoint:
    """Load a text-LM HF dir. `dtype` (float32, float16, bfloat16) casts; None keeps the file's.
    (`evomerge_jax.load` also takes LLaVA dirs: api.load.)"""
    return load_text(TensorReader(path), dtype)


def load_text(reader: TensorReader, dtype: str | None = None) -> Checkpoint:
    """The decoder a reader describes (a text-LM dir, or a VLM's language tower)."""
    if dtype is not None and dtype not in DTYPES:
        raise CheckpointError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    reader.check()
    spec, cast = reader.spec, (DTYPES[dtype] if dtype else None)
    params: dict = {g: jnp.asarray(reader.read(hf, cast)) for g, hf in
                    (("embed", "model.embed_tokens.weight"), ("final_norm", "model.norm.weight"))}
    if not spec.tie_word_embeddings:
        params["lm_head"] = jnp.asarray(reader.read("lm_head.weight", cast))
    by_short: dict[str, list] = {s: [] for s in spec.layer_tensors}
    for name, (short, layer) in hf_tensor_names(spec).items():
        if layer is not None:
            by_short[short].append(reader.read(name, cast))
    params["layers"] = {s: jnp.asarray(np.stack(v)) for s, v in by_short.items()}
    dtypes = {str(x.dtype) for x in [params["embed"], *params["layers"].values()]}
    if len(dtypes) > 1 and dtype is None:
        raise CheckpointError(f"{reader.root}: tensors mix dtypes {sorted(dtypes)}; pass dtype=")
    return Checkpoint(spec=spec, params=params, config=reader.config, source_dir=reader.root)


def hf_state_dict(ckpt: Checkpoint):
    """Yield (HF name, numpy array) in HF order, unstacking the layer axis."""
    for name, (short, layer) in hf_tensor_names(ckpt.spec).items():
        if layer is None:
            yield name, np.asarray(ckpt.params[short])
        else:
            yield name, np.asarray(ckpt.params["layers"][short][layer])


def output_config(cfg: dict, spec: ModelSpec, dtype) -> dict:
    """The config.json to write for tensors of `dtype` laid out as `spec`."""
    out = config_with_num_layers(cfg, spec)
    name = jnp.dtype(dtype).name
    out["torch_dtype"] = name
    if "dtype" in out:
        out["dtype"] = name
    return out


def copy_tokenizer_files(source: Path | None, dest: Path) -> list[str]:
    if source is None:
        return []
    copied = []
    for fname in TOKENIZER_FILES:
        if (Path(source) / fname).is_file():
            (dest / fname).write_bytes((Path(source) / fname).read_bytes())
            copied.append(fname)
    return copied


def write_hf_dir(out_dir: str | Path, tensors, config, *, tokenizer_from=None,
                 overwrite: bool = False, shard_size: int | str = DEFAULT_SHARD_SIZE,
                 extra_files: dict[str, str] | None = None) -> Path:
    """The one writer of an HF dir: (name, array) pairs streamed into safetensors shards (+ index
    when more than one), config.json (`config`: a dict, or a function called once the tensors are
    written), the tokenizer and generation files of `tokenizer_from`,
    and `extra_files` (name -> text). Built beside the target and renamed into place: an error
    leaves nothing behind, and an existing target is replaced only with `overwrite`, once the new
    dir is complete."""
    limit = parse_size(shard_size)  # a bad size fails before anything is written
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        write_safetensors_shards(tensors, tmp, limit)
        config = config() if callable(config) else config
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copy_tokenizer_files(None if tokenizer_from is None else Path(tokenizer_from), tmp)
        for fname, text in (extra_files or {}).items():
            (tmp / fname).write_text(text)
    return Path(out_dir)


def save(ckpt: Checkpoint, path: str | Path, *, shard_size: int | str = DEFAULT_SHARD_SIZE,
         tokenizer_from: str | Path | None = None, overwrite: bool = False,
         extra_files: dict[str, str] | None = None) -> Path:
    """Write `ckpt` as an HF dir (`write_hf_dir`), tokenizer and generation files copied from
    `tokenizer_from` (default: the dir it was loaded from)."""
    return write_hf_dir(path, hf_state_dict(ckpt), output_config(ckpt.config, ckpt.spec, ckpt.dtype),
                        tokenizer_from=tokenizer_from if tokenizer_from is not None
                        else ckpt.source_dir, overwrite=overwrite, shard_size=shard_size,
                        extra_files=extra_files)
