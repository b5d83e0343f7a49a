"""A parsed merge config checked against its models and expanded into a frozen `MergePlan`: one
`TensorOp` (which tensors of which models to read, and every parameter already evaluated) per
output tensor, in Hugging Face order.

Everything a user can get wrong is found here, from config.json files and safetensors headers:
missing required parameters, densities outside [0, 1], layer ranges out of bounds, slices of
unequal length, models of another architecture, shape or vocabulary. Errors are one-line
`ConfigError`s naming the key and the model. Parameters the method does not read are ignored, as
mergekit ignores them, and listed in `MergePlan.warnings`, one line each.

Models are read through their `Layout` (tensor names, shapes, layer indices), so any decoder whose
layers are named per index merges, whether or not the JAX forward supports its family.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evomerge_jax.arch import ModelSpec
from evomerge_jax.checkpoint import read_config
from evomerge_jax.errors import ConfigError, EvomergeError, MergeError
from evomerge_jax.merge.config import MergeConfig, evaluate, parse_config
from evomerge_jax.merge.layout import Layout, differences, read_layout, vocab_size
from evomerge_jax.merge.methods import REQUIRED, MergeMethod, get_method

# Options a caller computes (arrays), never written in a YAML file.
_INTERNAL_OPTIONS = frozenset({"magnitude_tables_kn"})
# Spec fields that fix tensor shapes (with `layer_tensors`): every model must agree on them.
_SHAPE_FIELDS = ("architecture", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads",
                 "head_dim", "tie_word_embeddings")


@dataclass(frozen=True)
class Input:
    """One tensor of one model dir."""

    model: Path
    tensor: str


@dataclass(frozen=True)
class TensorOp:
    """One output tensor: `base` and the K stacked `sources` (config order), the method's
    per-source values as K-tuples and global values as scalars, and its static options."""

    name: str
    base: Input | None
    sources: tuple[Input, ...]
    params: Mapping[str, Any]
    options: Mapping[str, Any]


@dataclass(frozen=True)
class MergePlan:
    method: MergeMethod
    config: MergeConfig
    text: str                      # the YAML as written; saved as mergekit_config.yml
    spec: ModelSpec | None         # the output model, for families the forward supports
    num_layers: int                # of the output model
    layer_types: list | None       # per output layer, when the config lists them
    hf_config: Mapping[str, Any]   # config.json of the base (else the first model)
    models: tuple[Path, ...]       # every model dir read, once each
    tokenizer_dir: Path
    read_dtype: str | None         # `dtype`: inputs are rounded to it, and so is the result
    out_dtype: str | None          # `out_dtype`: the result's dtype (default: read_dtype, else
                                   # each tensor's inputs promoted, as torch promotes them)
    ops: tuple[TensorOp, ...]
    warnings: tuple[str, ...] = ()  # one line per ignored parameter


@dataclass(frozen=True)
class _Source:
    label: str                     # the path as written in the YAML
    path: Path
    start: int
    params: Mapping[str, Any]
    where: str                     # "models[1]", "slices[0].sources[2]"


@dataclass(frozen=True)
class _Slice:
    base: _Source | None
    stacked: tuple[_Source, ...]
    first: _Source                 # the base, else the first source: the output keeps its
                                   # per-layer sliding flags
    length: int
    params: Mapping[str, Any]
    where: str


def _key(path: str) -> Path:
    return Path(os.path.abspath(path))


class _Models:
    """Opens each model dir once (headers only) and checks every model against the reference."""

    def __init__(self, where: str):
        self.where, self.readers, self.reference = where, {}, None

    def open(self, label: str, key_where: str) -> Layout:
        path = _key(label)
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


def _ignored_params(cfg: MergeConfig, method: MergeMethod, where: str) -> tuple[str, ...]:
    """One warning per parameter the method does not read. mergekit ignores them (its own tests
    give every model a `weight` whatever the method, and users copy configs between methods), so
    they are reported, not refused; a typo then shows as a warning naming it."""
    shared = set(method.global_params) | set(method.options) - _INTERNAL_OPTIONS
    known = sorted(set(method.per_source) | shared)
    levels = [("parameters", cfg.parameters, False)]
    levels += [(f"models[{i}].parameters", m.parameters, True) for i, m in enumerate(cfg.models or ())]
    for i, sl in enumerate(cfg.slices or ()):
        levels.append((f"slices[{i}].parameters", sl.parameters, False))
        levels += [(f"slices[{i}].sources[{j}].parameters", s.parameters, True)
                   for j, s in enumerate(sl.sources)]
    warnings = []
    for loc, params, per_source_level in levels:
        for name in params:
            if name not in known:
                warnings.append(f"{where}: parameter {name!r} in {loc} is ignored: merge method "
                                f"{method.name!r} does not read it (it reads "
                                f"{', '.join(known) or 'none'})")
            elif per_source_level and name in shared:
                warnings.append(f"{where}: parameter {name!r} in {loc} is ignored: it is global for "
                                f"merge method {method.name!r}; set it under the top-level or a "
                                "slice's parameters")
    return tuple(warnings)


def _checked(name: str, value, default, loc: str, model: str | None, tensor: str, where: str):
    """A value of the type its default has; densities within [0, 1]."""
    owner = f" for {model}" if model else ""
    kind = ("a boolean" if isinstance(default, bool) else "a string" if isinstance(default, str)
            else "a number")
    if isinstance(default, str) != isinstance(value, str) or (
            isinstance(value, bool) and kind == "a number"):
        raise ConfigError(f"{where}: {loc} = {value!r}{owner}: expected {kind}")
    if isinstance(default, bool):
        return bool(value)
    if name == "density" and not 0.0 <= value <= 1.0:
        raise ConfigError(f"{where}: {loc} = {value!r}{owner} at {tensor} is outside [0, 1]")
    if isinstance(default, int) and not isinstance(default, bool):
        return int(value)
    return value if isinstance(value, str) else float(value)


def _lookup(name: str, levels, t: float, tensor: str):
    """The first level (source, slice, top) whose value applies to `tensor`, and where it is."""
    for params, loc in levels:
        if name in params:
            value = evaluate(params[name], t, tensor)
            if value is not None:
                return value, f"{loc}.{name}"
    return None, None


def _op(cfg: MergeConfig, method: MergeMethod, sl: _Slice, name: str, t: float, source_tensor,
        where: str) -> TensorOp:
    top = (cfg.parameters, "parameters")
    slice_level = (sl.params, f"{sl.where}.parameters")
    params, options = {}, {}
    for pname, default in method.per_source.items():
        values, given = [], False
        for src in sl.stacked:
            value, loc = _lookup(pname, [(src.params, f"{src.where}.parameters"), slice_level, top],
                                 t, source_tensor(src))
            if value is None and default is REQUIRED:
                raise ConfigError(f"{where}: missing required parameter {pname!r} for {src.label} "
                                  f"({src.where}); set it in its parameters or the top-level parameters")
            given |= value is not None
            values.append(default if value is None else
                          _checked(pname, value, default, loc, src.label, source_tensor(src), where))
        if given:
            params[pname] = tuple(values)
    shared = {**method.global_params,
              **{k: v for k, v in method.options.items() if k not in _INTERNAL_OPTIONS}}
    for pname, default in shared.items():
        value, loc = _lookup(pname, [slice_level, top], t, name)
        if value is None and default is REQUIRED:
            raise ConfigError(f"{where}: missing required parameter {pname!r} of merge method "
                              f"{method.name!r} for {name}; set it under the top-level parameters")
        if value is not None:
            target = options if pname in method.options else params
            target[pname] = _checked(pname, value, default, loc, None, name, where)
    base = None if sl.base is None else Input(sl.base.path, source_tensor(sl.base))
    sources = tuple(Input(s.path, source_tensor(s)) for s in sl.stacked)
    return TensorOp(name, base, sources, params, options)


def _check_arity(method: MergeMethod, count: int, loc: str, where: str) -> None:
    low, high = method.min_sources, method.max_sources
    if count >= low and (high is None or count <= high):
        return
    wanted = (f"exactly {high}" if high == low else f"at least {low}" if high is None
              else f"{low} to {high}")
    raise ConfigError(f"{where}: merge method {method.name!r} takes {wanted} non-base model(s), "
                      f"got {count} in {loc}")


def _model_sources(cfg: MergeConfig, models: _Models, where: str) -> list[tuple]:
    entries = [(m.model, m.parameters, f"models[{i}]") for i, m in enumerate(cfg.models)]
    if cfg.base_model and all(_key(label) != _key(cfg.base_model) for label, _, _ in entries):
        entries.insert(0, (cfg.base_model, {}, "base_model"))  # the base joins the inputs
    sources, depth = [], None
    for label, params, loc in entries:
        layers = models.open(label, loc).num_layers
        if depth is not None and layers != depth[0]:
            raise ConfigError(f"{where}: {loc} ({label}) has {layers} layers but {depth[1]} has "
                              f"{depth[0]}; use slices with layer_range to merge different depths")
        depth = depth or (layers, label)
        sources.append(_Source(label, _key(label), 0, params, loc))
    return [(sources, depth[0], {}, "models")]


def _slice_sources(cfg: MergeConfig, models: _Models, where: str) -> list[tuple]:
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
            sources.append(_Source(src.model, _key(src.model), a, src.parameters, loc))
            lengths.append(b - a)
        if len(set(lengths)) > 1:
            sizes = ", ".join(f"{s.where} ({s.label}) {n}" for s, n in zip(sources, lengths))
            raise ConfigError(f"{where}: slices[{i}] sources cover different numbers of layers: "
                              f"{sizes}; every source of a slice needs the same length")
        out.append((sources, lengths[0], sl.parameters, f"slices[{i}]"))
    return out


def _slices(cfg: MergeConfig, method: MergeMethod, models: _Models, where: str) -> list[_Slice]:
    if method.base == "required" and not cfg.base_model:
        raise ConfigError(f"{where}: merge method {method.name!r} needs base_model")
    if cfg.base_model:
        models.open(cfg.base_model, "base_model")
    raw = (_model_sources if cfg.models is not None else _slice_sources)(cfg, models, where)
    out = []
    for sources, length, params, loc in raw:
        base = None
        if method.base != "none" and cfg.base_model:
            base = next((s for s in sources if s.path == _key(cfg.base_model)), None)
            if base is None:
                raise ConfigError(f"{where}: {loc} has no source from base_model "
                                  f"{cfg.base_model}; merge method {method.name!r} needs it in "
                                  "every slice")
        stacked = tuple(s for s in sources if s is not base)
        _check_arity(method, len(stacked), loc, where)
        out.append(_Slice(base, stacked, base or sources[0], length, params, loc))
    return out


def _ops(cfg: MergeConfig, method: MergeMethod, slices: list[_Slice], layout: Layout,
         where: str) -> tuple[TensorOp, ...]:
    """Every output tensor's op, built (and so checked) in output order: embeddings from the first
    slice, the layers slice by slice, the rest (final norm, lm_head) from the last slice."""
    ops = [_op(cfg, method, slices[0], name, 0.0, lambda src, name=name: name, where)
           for name in layout.pre]
    offset = 0
    for sl in slices:
        for j in range(sl.length):
            t = j / (sl.length - 1) if sl.length > 1 else 1.0
            for template in layout.layer:
                def source_tensor(src, template=template, j=j):
                    return template.format(src.start + j)
                ops.append(_op(cfg, method, sl, template.format(offset + j), t, source_tensor,
                               where))
        offset += sl.length
    ops += [_op(cfg, method, slices[-1], name, 0.0, lambda src, name=name: name, where)
            for name in layout.post]
    return tuple(ops)


def _tokenizer_dir(cfg: MergeConfig, default: Path, vocab: int, where: str) -> Path:
    source = cfg.tokenizer_source
    if source is None:
        return default
    if source == "union":
        raise ConfigError(f"{where}: tokenizer_source: union is not supported yet; use base or a "
                          "model dir")
    if source == "base":
        if not cfg.base_model:
            raise ConfigError(f"{where}: tokenizer_source: base needs base_model")
        return _key(cfg.base_model)
    try:
        root, hf_config, _ = read_config(source, need_spec=False)
    except EvomergeError as exc:
        raise ConfigError(f"{where}: tokenizer_source ({source}): {exc}") from None
    if vocab_size(hf_config) != vocab:
        raise ConfigError(f"{where}: vocabulary mismatch: tokenizer_source {source} has vocab_size "
                          f"{vocab_size(hf_config)} but the merged models have {vocab}; aligning "
                          "vocabularies is not supported yet")
    return _key(str(root))


def plan_from_text(text: str, where: str = "merge config") -> MergePlan:
    """Parse, check against the models (config.json + safetensors headers) and expand."""
    cfg = parse_config(text, where)
    try:
        method = get_method(cfg.merge_method)
    except MergeError as exc:
        raise ConfigError(f"{where}: merge_method: {exc}") from None
    warnings = _ignored_params(cfg, method, where)
    models = _Models(where)
    slices = _slices(cfg, method, models, where)
    config_dir = _key(cfg.base_model) if cfg.base_model else slices[0].first.path
    layout = models.readers[config_dir]
    firsts = [(models.readers[sl.first.path], sl.first.start, sl.length) for sl in slices]
    spec = None
    if all(first.spec is not None for first, _, _ in firsts):
        spec = layout.spec.with_num_layers(tuple(
            flag for first, a, n in firsts for flag in first.spec.sliding_layers[a:a + n]))
    layer_types = None
    if all(first.layer_types is not None for first, _, _ in firsts):
        layer_types = [kind for first, a, n in firsts for kind in first.layer_types[a:a + n]]
    return MergePlan(
        method=method, config=cfg, text=text, spec=spec,
        num_layers=sum(sl.length for sl in slices), layer_types=layer_types,
        hf_config=layout.config, models=tuple(models.readers),
        ops=_ops(cfg, method, slices, layout, where),
        tokenizer_dir=_tokenizer_dir(cfg, config_dir, layout.vocab_size, where),
        read_dtype=cfg.dtype, out_dtype=cfg.out_dtype, warnings=warnings)


def load_plan(path: str | Path) -> MergePlan:
    """Read a merge YAML file and build its plan; relative model paths resolve against the
    current working directory (as in mergekit), not the YAML's dir."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the merge config ({exc})") from None
    return plan_from_text(text, str(path))
