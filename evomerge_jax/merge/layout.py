"""What a merge needs of a model dir: its tensor names, shapes and layer indices, from config.json
and the safetensors headers. No forward pass is involved, so `evomerge merge` takes any decoder
whose per-layer tensors are named `<prefix><i>.<rest>` (`model.layers.3.…`, GPT-2's
`transformer.h.3.…`, Granite, …), not only the families the JAX forward supports.

For the families with a forward (`families.SUPPORTED_ARCHITECTURES`) the layout comes from their
`ModelSpec`, after `TensorReader.check` has reported every missing, unexpected or misshapen tensor;
for the others it is read off the names: one layer stack, the same tensors in every layer, and the
tensors outside the stack split into embeddings (taken from the first slice, as mergekit does) and
the rest (final norm, lm_head: taken from the last slice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from evomerge_jax.arch import IGNORED_SUFFIXES, ModelSpec, global_hf_name, layer_hf_name
from evomerge_jax.checkpoint import TensorReader
from evomerge_jax.errors import CheckpointError
from evomerge_jax.vlm.checkpoint import open_reader

# `<prefix><i>.<rest>`: the first dotted component that is a number is the layer index.
_LAYER_NAME = re.compile(r"^(?P<prefix>.+?\.)(?P<index>\d+)\.(?P<rest>.+)$")
# Tensors outside the layer stack that feed it: they come from the first slice.
_EMBEDDING_WORDS = ("embed", "wte", "wpe")
# config.json keys that hold the layer count, by family (GPT-2 uses n_layer).
LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Layout:
    """One model dir as a merge reads it. `layer` holds name templates (`{}` = layer index) in
    output order; `shapes` is keyed by pre/post names and by layer templates (layer 0's shape)."""

    root: Path
    config: Mapping
    architecture: str
    spec: ModelSpec | None          # the forward's spec, for the families it supports
    num_layers: int
    pre: tuple[str, ...]
    layer: tuple[str, ...]
    post: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]
    vocab_size: int | None

    @property
    def layer_types(self) -> list | None:
        """Per-layer attention types from config.json, when it lists them."""
        types = self.config.get("layer_types")
        return list(types) if isinstance(types, list) else None


def _from_spec(reader: TensorReader) -> Layout:
    spec = reader.spec
    pre = (global_hf_name("embed"),)
    post = tuple(global_hf_name(g) for g in spec.global_tensors if g != "embed")
    layer = tuple(layer_hf_name(short, "{}", spec) for short in spec.layer_tensors)
    shapes = {global_hf_name(g): spec.global_shape(g) for g in spec.global_tensors}
    shapes.update({layer_hf_name(s, "{}", spec): spec.layer_shape(s) for s in spec.layer_tensors})
    return Layout(reader.root, reader.config, spec.architecture, spec, spec.num_layers, pre, layer,
                  post, shapes, spec.vocab_size)


def vocab_size(cfg: Mapping) -> int | None:
    """The vocabulary size a config.json declares (a VLM's under text_config), or None."""
    value = cfg.get("vocab_size", (cfg.get("text_config") or {}).get("vocab_size"))
    return int(value) if isinstance(value, int) else None


def _from_names(reader: TensorReader, architecture: str) -> Layout:
    """The layout read off the tensor names; every problem is reported at once."""
    problems, stacks, others = [], {}, []
    for name in reader.names():
        if name.endswith(IGNORED_SUFFIXES):
            continue
        if reader.dtype(name) not in _FLOAT_DTYPES:
            problems.append(f"tensor {name!r} has dtype {reader.dtype(name)}; only floating "
                            "tensors can be merged")
        match = _LAYER_NAME.match(name)
        if match is None:
            others.append(name)
        else:
            stack = stacks.setdefault(match["prefix"], {})
            stack.setdefault(int(match["index"]), set()).add(match["rest"])
    if len(stacks) != 1:
        found = ", ".join(f"{p}N" for p in sorted(stacks)) or "none"
        problems.append(f"expected one stack of layers named <prefix>.N.<tensor>, found {found}")
    else:
        (prefix, layers), = stacks.items()
        if sorted(layers) != list(range(len(layers))):
            problems.append(f"layer indices of {prefix}N are not 0..{len(layers) - 1}")
        first = layers.get(0, set())
        for index, rests in sorted(layers.items()):
            if rests != first:
                signed = sorted(f"+{r}" for r in rests - first) + sorted(f"-{r}" for r in first - rests)
                problems.append(f"layer {index} holds other tensors than layer 0 ({', '.join(signed)})")
        declared = next((reader.config[k] for k in LAYER_COUNT_KEYS if k in reader.config), None)
        if declared is not None and declared != len(layers):
            problems.append(f"config.json declares {declared} layers but the weights hold "
                            f"{len(layers)}")
    if problems:
        raise CheckpointError(f"{reader.root}: " + "; ".join(problems))
    layer = tuple(f"{prefix}{{}}.{rest}" for rest in sorted(first))
    pre = tuple(sorted(n for n in others if any(w in n for w in _EMBEDDING_WORDS)))
    post = tuple(sorted(n for n in others if n not in pre))
    shapes = {n: reader.shape(n) for n in others}
    shapes.update({t: reader.shape(t.format(0)) for t in layer})
    return Layout(reader.root, reader.config, architecture, None, len(layers), pre, layer, post,
                  shapes, vocab_size(reader.config))


def read_layout(path: str | Path) -> Layout:
    """A model dir's layout (headers only). Raises `CheckpointError` naming the dir."""
    reader = open_reader(path, need_spec=False)
    archs = reader.config.get("architectures") or []
    if reader.spec is not None:
        reader.check()
        return _from_spec(reader)
    if not archs:
        raise CheckpointError(f"{reader.root}: config.json has no 'architectures' entry")
    return _from_names(reader, archs[0])


def differences(layout: Layout, ref: Layout) -> list[str]:
    """Why `layout` cannot be merged with `ref` (empty when it can): its architecture, tensor
    names or shapes differ."""
    diffs = [] if layout.architecture == ref.architecture else [
        f"architecture {layout.architecture!r} vs {ref.architecture!r}"]
    for part in ("pre", "layer", "post"):
        mine, theirs = getattr(layout, part), getattr(ref, part)
        signed = [f"+{n}" for n in mine if n not in theirs] + [f"-{n}" for n in theirs if n not in mine]
        if signed:
            diffs.append(f"tensors differ ({', '.join(signed)})")
    diffs += [f"{name} has shape {list(shape)} vs {list(ref.shapes[name])}"
              for name, shape in layout.shapes.items()
              if name in ref.shapes and shape != ref.shapes[name]]
    return diffs


def output_config(cfg: Mapping, num_layers: int, layer_types: list | None, dtype: str) -> dict:
    """config.json of a merged model without a forward spec: its layer count (under whichever key
    the family uses), its per-layer attention types when listed, and its dtype."""
    out = dict(cfg)
    keys = [k for k in LAYER_COUNT_KEYS if k in cfg] or ["num_hidden_layers"]
    for key in keys:
        out[key] = num_layers
    if layer_types is not None:
        out["layer_types"] = layer_types
    out["torch_dtype"] = dtype
    if "dtype" in out:
        out["dtype"] = dtype
    return out

