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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from evomerge_jax.arch import ModelSpec
from evomerge_jax.errors import ConfigError, MergeError
from evomerge_jax.merge.config import MergeConfig, evaluate, parse_config
from evomerge_jax.merge.layout import Layout
from evomerge_jax.merge.methods import REQUIRED, MergeMethod, get_method
from evomerge_jax.merge.sources import Models, Slice, model_key, read_slices, tokenizer_dir
from evomerge_jax.vlm.checkpoint import is_vlm_dir

# Options a caller computes (arrays), never written in a YAML file.
_INTERNAL_OPTIONS = frozenset({"magnitude_tables_kn"})


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
    vision_dir: Path | None = None  # a LLaVA source (the base, else the first): the output is a
                                    # LLaVA dir with its vision tower and projector


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


def _op(cfg: MergeConfig, method: MergeMethod, sl: Slice, name: str, t: float, source_tensor,
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


def _ops(cfg: MergeConfig, method: MergeMethod, slices: list[Slice], layout: Layout,
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


def plan_from_text(text: str, where: str = "merge config") -> MergePlan:
    """Parse, check against the models (config.json + safetensors headers) and expand."""
    cfg = parse_config(text, where)
    try:
        method = get_method(cfg.merge_method)
    except MergeError as exc:
        raise ConfigError(f"{where}: merge_method: {exc}") from None
    warnings = _ignored_params(cfg, method, where)
    models = Models(where)
    slices = read_slices(cfg, method, models, where)
    config_dir = model_key(cfg.base_model) if cfg.base_model else slices[0].first.path
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
        tokenizer_dir=tokenizer_dir(cfg, config_dir, layout.vocab_size, where),
        read_dtype=cfg.dtype, out_dtype=cfg.out_dtype, warnings=warnings,
        vision_dir=next((p for p in (config_dir, *models.readers) if is_vlm_dir(p)), None))


def load_plan(path: str | Path) -> MergePlan:
    """Read a merge YAML file and build its plan; relative model paths resolve against the
    current working directory (as in mergekit), not the YAML's dir."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the merge config ({exc})") from None
    return plan_from_text(text, str(path))
