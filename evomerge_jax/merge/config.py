"""The mergekit merge YAML as typed, frozen pydantic models (unknown keys rejected), and the
parameter values it may hold (docs/merge_semantics.md §5). `plan.py` checks a parsed
config against its models and expands it into one operation per output tensor.

Parameter values, as mergekit 0.1.5 evaluates them (checked against its outputs):
- a scalar; a gradient (a list of numbers, piecewise-linear over evenly spaced anchors) taken at
  t = j / (n − 1) for output layer j of an n-layer slice, t = 1 when n = 1, and t = 0 for the
  embeddings (from the first slice), the final norm and lm_head (from the last slice);
- a list of `{filter, value}` entries: the first entry whose filter is a substring of the tensor
  name wins (no filter = always). A per-source parameter matches that source's own tensor name
  (`model.layers.9.…` for layer 9 of that model), a global parameter the output tensor's name. A
  list with no matching entry falls through to the next level: source, slice, top level, default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, model_validator

from evomerge_jax.errors import ConfigError

DTypeName = Literal["float32", "float16", "bfloat16"]


# ---- parameter values -------------------------------------------------------------------------

@dataclass(frozen=True)
class Gradient:
    """Piecewise-linear over evenly spaced anchors on t in [0, 1]."""

    anchors: tuple[float, ...]

    def at(self, t: float) -> float:
        if len(self.anchors) == 1:
            return self.anchors[0]
        return float(np.interp(t, np.linspace(0.0, 1.0, len(self.anchors)), self.anchors))


@dataclass(frozen=True)
class Filtered:
    """`{filter, value}` entries: (substring or None for "always", scalar or Gradient)."""

    entries: tuple[tuple[str | None, Any], ...]


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _scalar_or_gradient(raw):
    if isinstance(raw, (bool, int, float, str)):
        return raw
    if isinstance(raw, list) and raw and all(_is_number(x) for x in raw):
        return Gradient(tuple(float(x) for x in raw))
    raise ValueError("expected a number, a list of numbers (a gradient) or a list of "
                     f"{{filter, value}} entries, got {raw!r}")


def _parse_value(raw):
    if not (isinstance(raw, list) and raw and all(isinstance(x, dict) for x in raw)):
        return _scalar_or_gradient(raw)
    entries = []
    for i, entry in enumerate(raw):
        unknown = sorted(set(entry) - {"filter", "value"})
        if unknown or "value" not in entry:
            problem = f"unknown key {unknown[0]!r}" if unknown else "no 'value'"
            raise ValueError(f"filter entry {i} has {problem}; each entry is {{filter, value}}")
        if entry.get("filter") is not None and not isinstance(entry["filter"], str):
            raise ValueError(f"filter entry {i}: filter must be a string, got {entry['filter']!r}")
        entries.append((entry.get("filter"), _scalar_or_gradient(entry["value"])))
    return Filtered(tuple(entries))


def evaluate(value, t: float, tensor: str):
    """A parameter value for one tensor at position t; None when no filter entry matches."""
    if isinstance(value, Filtered):
        for pattern, inner in value.entries:
            if pattern is None or pattern in tensor:
                return evaluate(inner, t, tensor)
        return None
    return value.at(t) if isinstance(value, Gradient) else value


Params = dict[str, Annotated[Any, BeforeValidator(_parse_value)]]


# ---- the YAML schema --------------------------------------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    model: str
    parameters: Params = {}


class SliceSource(_Strict):
    model: str
    layer_range: tuple[int, int]
    parameters: Params = {}


class SliceEntry(_Strict):
    sources: list[SliceSource]
    parameters: Params = {}


class MergeConfig(_Strict):
    merge_method: str
    base_model: str | None = None
    models: list[ModelEntry] | None = None
    slices: list[SliceEntry] | None = None
    parameters: Params = {}
    dtype: DTypeName | None = None
    out_dtype: DTypeName | None = None
    tokenizer_source: str | None = None

    @model_validator(mode="after")
    def _one_layout(self):
        if (self.models is None) == (self.slices is None):
            raise ValueError("give exactly one of 'models' or 'slices'")
        if not (self.models or self.slices) or any(not s.sources for s in self.slices or ()):
            raise ValueError("'models' and every slice's 'sources' need at least one entry")
        return self


# mergekit keys this engine does not implement: named as such, not as typos.
_NOT_SUPPORTED = {("modules",), ("tokenizer",), ("chat_template",)}
_SCHEMA_AT = {(): MergeConfig, ("models",): ModelEntry, ("slices",): SliceEntry,
              ("slices", "sources"): SliceSource}


def _loc(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _schema_error(exc: ValidationError, where: str) -> ConfigError:
    problems = []
    # unknown keys first: a typo'd key also makes its intended key "missing"
    for err in sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden"):
        loc, msg = err["loc"], err["msg"].removeprefix("Value error, ")
        parent = _loc(loc[:-1])
        at = f"in {parent}" if parent else "at the top level"
        if err["type"] == "extra_forbidden" and loc in _NOT_SUPPORTED:
            problems.append(f"{loc[0]!r} is not supported yet")
        elif err["type"] == "extra_forbidden":
            known = _SCHEMA_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
            hint = f"; known: {', '.join(known.model_fields)}" if known else ""
            problems.append(f"unknown key {loc[-1]!r} {at}{hint}")
        elif err["type"] == "missing":
            problems.append(f"missing key {loc[-1]!r} {at}")
        else:
            problems.append(f"{_loc(loc)}: {msg}" if loc else msg)
    return ConfigError(f"{where}: " + "; ".join(problems))


def parse_config(text: str, where: str = "merge config") -> MergeConfig:
    """YAML text -> MergeConfig (structure and value syntax only; no file is opened)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with merge_method and models or slices")
    try:
        return MergeConfig.model_validate(raw)
    except ValidationError as exc:
        raise _schema_error(exc, where) from None
