"""The models a merge config names, opened once each (config.json and safetensors headers through
their `Layout`), checked against each other, and grouped into slices: which layers of which
models feed each stretch of output layers, with the base found in every slice. Also where the
output's tokenizer comes from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evomerge_jax.checkpoint import read_config
from evomerge_jax.errors import ConfigError, EvomergeError
from evomerge_jax.merge.config import MergeConfig
from evomerge_jax.merge.layout import Layout, differences, read_layout, vocab_size
from evomerge_jax.merge.methods import MergeMethod

# Spec fields that fix tensor shapes (with `layer_tensors`): every model must agree on them.
_SHAPE_FIELDS = ("architecture", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                 "head_dim", "tie_word_embeddings")


@dataclass(frozen=True)
class Source:
    label: str                     # the path as written in the YAML
    path: Path
    start: int
    params: Mapping[str, Any]
    where: str                     # "models[1]", "slices[0].sources[2]"


@dataclass(frozen=True)
class Slice:
    base: Source | None
    stacked: tuple[Source, ...]
    first: Source                 # the base, else the first source: the output keeps its
                                   # per-layer sliding flags
    length: int
    params: Mapping[str, Any]
    where: str


def model_key(path: str) -> Path:
    return Path(os.path.abspath(path))


class Models:
    """Opens each model dir once (headers only) and checks every model against the reference."""

    def __init__(self, where: str):
        self.where, self.readers, self.reference = where, {}, None

    def open(self, label: str, key_where: str) -> Layout:
        path = model_key(label)
        if path not in self.readers:
            try:
                layout = read_layout(path)
            except EvomergeError as exc:
                raise ConfigError(f"{self.where}: {key_where} ({label}): {exc}") from None
            if self.reference is None:
                self.reference = (label, layout)
            else:
                self._compare(label, key_where, layout)
            self.readers[path] = layout
        return self.readers[path]

    def _compare(self, label: str, key_where: str, layout: Layout) -> None:
        ref_label, ref_layout = self.reference
        spec, ref = layout.spec, ref_layout.spec
        if layout.vocab_size != ref_layout.vocab_size:
            raise ConfigError(
                f"{self.where}: vocabulary mismatch: {ref_label} has vocab_size "
                f"{ref_layout.vocab_size} but {key_where} ({label}) has {layout.vocab_size}; "
                "merging different vocabularies is not supported yet")
        if spec is None or ref is None:  # a family without a forward: by tensor names and shapes
            diffs = differences(layout, ref_layout)
        else:
            diffs = [f"{f} {getattr(spec, f)!r} vs {getattr(ref, f)!r}" for f in _SHAPE_FIELDS
                     if getattr(spec, f) != getattr(ref, f)]
            extra = [t for t in spec.layer_tensors if t not in ref.layer_tensors]
            missing = [t for t in ref.layer_tensors if t not in spec.layer_tensors]
            if extra or missing:
                signed = [f"+{t}" for t in extra] + [f"-{t}" for t in missing]
                diffs.append(f"per-layer tensors differ ({', '.join(signed)})")
        if diffs:
            raise ConfigError(f"{self.where}: {key_where} ({label}) differs from {ref_label}: "
                              f"{', '.join(diffs)}; every model must share the architecture and "
                              "tensor shapes")


def _check_arity(method: MergeMethod, count: int, loc: str, where: str) -> None:
    low, high = method.min_sources, method.max_sources
    if count >= low and (high is None or count <= high):
        return
    wanted = (f"exactly {high}" if high == low else f"at least {low}" if high is None
              else f"{low} to {high}")
    raise ConfigError(f"{where}: merge method {method.name!r} takes {wanted} non-base model(s), "
                      f"got {count} in {loc}")


def _model_sources(cfg: MergeConfig, models: Models, where: str) -> list[tuple]:
    entries = [(m.model, m.parameters, f"models[{i}]") for i, m in enumerate(cfg.models)]
    if cfg.base_model and all(model_key(label) != model_key(cfg.base_model) for label, _, _ in entries):
        entries.insert(0, (cfg.base_model, {}, "base_model"))  # the base joins the inputs
    sources, depth = [], None
    for label, params, loc in entries:
        layers = models.open(label, loc).num_layers
        if depth is not None and layers != depth[0]:
            raise ConfigError(f"{where}: {loc} ({label}) has {layers} layers but {depth[1]} has "
                              f"{depth[0]}; use slices with layer_range to merge different depths")
        depth = depth or (layers, label)
        sources.append(Source(label, model_key(label), 0, params, loc))
    return [(sources, depth[0], {}, "models")]


def _slice_sources(cfg: MergeConfig, models: Models, where: str) -> list[tuple]:
    out = []
    for i, sl in enumerate(cfg.slices):
        sources, lengths = [], []
        for j, src in enumerate(sl.sources):
            loc = f"slices[{i}].sources[{j}]"
            layers = models.open(src.model, loc).num_layers
            a, b = src.layer_range
            if not 0 <= a < b <= layers:
                raise ConfigError(f"{where}: {loc}.layer_range [{a}, {b}] is out of bounds for "
                                  f"{src.model} ({layers} layers; need 0 <= start < end <= {layers})")
            sources.append(Source(src.model, model_key(src.model), a, src.parameters, loc))
            lengths.append(b - a)
        if len(set(lengths)) > 1:
            sizes = ", ".join(f"{s.where} ({s.label}) {n}" for s, n in zip(sources, lengths))
            raise ConfigError(f"{where}: slices[{i}] sources cover different numbers of layers: "
                              f"{sizes}; every source of a slice needs the same length")
        out.append((sources, lengths[0], sl.parameters, f"slices[{i}]"))
    return out


def read_slices(cfg: MergeConfig, method: MergeMethod, models: Models, where: str) -> list[Slice]:
    if method.base == "required" and not cfg.base_model:
        raise ConfigError(f"{where}: merge method {method.name!r} needs base_model")
    if cfg.base_model:
        models.open(cfg.base_model, "base_model")
    raw = (_model_sources if cfg.models is not None else _slice_sources)(cfg, models, where)
    out = []
    for sources, length, params, loc in raw:
        base = None
        if method.base != "none" and cfg.base_model:
            base = next((s for s in sources if s.path == model_key(cfg.base_model)), None)
            if base is None:
                raise ConfigError(f"{where}: {loc} has no source from base_model "
                                  f"{cfg.base_model}; merge method {method.name!r} needs it in "
                                  "every slice")
        stacked = tuple(s for s in sources if s is not base)
        _check_arity(method, len(stacked), loc, where)
        out.append(Slice(base, stacked, base or sources[0], length, params, loc))
    return out


def tokenizer_dir(cfg: MergeConfig, default: Path, vocab: int, where: str) -> Path:
    source = cfg.tokenizer_source
    if source is None:
        return default
    if source == "union":
        raise ConfigError(f"{where}: tokenizer_source: union is not supported yet; use base or a "
                          "model dir")
    if source == "base":
        if not cfg.base_model:
            raise ConfigError(f"{where}: tokenizer_source: base needs base_model")
        return model_key(cfg.base_model)
    try:
        root, hf_config, _ = read_config(source, need_spec=False)
    except EvomergeError as exc:
        raise ConfigError(f"{where}: tokenizer_source ({source}): {exc}") from None
    if vocab_size(hf_config) != vocab:
        raise ConfigError(f"{where}: vocabulary mismatch: tokenizer_source {source} has vocab_size "
                          f"{vocab_size(hf_config)} but the merged models have {vocab}; aligning "
                          "vocabularies is not supported yet")
    return model_key(str(root))
