"""The sections of an evolve config (config.py assembles them into `EvolveConfig`): frozen
pydantic models, each with its defaults and the checks that need nothing beyond its own keys."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from ..merge.task_arithmetic import PRESETS
from .lm_eval_config import LmEvalSection
from .method_genes import GENOME_METHODS, fixed_only, method_parameters, switches
from .rouge import resolve_tokenizer
from .strategy import algorithms
from .task_types import TASK_TYPES

# Parameter-space bounds [low, high] used when the config gives none.
DEFAULT_BOUNDS = {"weight": (0.0, 1.0), "density": (0.0, 1.0), "gamma": (0.0, 0.5),
                  "epsilon": (0.0, 0.5), "lambda": (0.0, 2.0), "t": (0.0, 1.0),
                  "select_topk": (0.1, 1.0)}
DEFAULT_SIGMA = 1.0 / 6.0  # Akiba et al. 2025, PS: CMA-ES mean 0.5, sigma 1/6 over [0, 1]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MergeSection(_Strict):
    method: str = "dare_ties"
    evolve: tuple[str, ...] = ("weight", "density")
    parameters: dict[str, float | bool] = Field(default_factory=dict)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)
    rescale_rule: Literal["l1", "inverse_density"] = "l1"

    @model_validator(mode="after")
    def _check(self):
        if self.method not in GENOME_METHODS:
            raise ValueError(f"merge method {self.method!r} cannot be evolved; parameter-space "
                             f"evolution supports: {', '.join(GENOME_METHODS)}")
        used = method_parameters(self.method)
        if not used:
            raise ValueError(f"merge method {self.method!r} has no numeric parameter to evolve "
                             "(mergekit gives it none); merge with it through `evomerge merge`")
        flags = switches(self.method)
        if self.method not in PRESETS and self.rescale_rule != "l1":
            raise ValueError(f"merge.rescale_rule applies to DARE/DELLA methods, not "
                             f"{self.method!r}")
        if not self.evolve:
            raise ValueError("merge.evolve is empty: list the parameters to evolve (e.g. weight)")
        for name in self.evolve:
            if name in flags:
                raise ValueError(f"{name!r} is a boolean switch and cannot be evolved; fix it under "
                                 "merge.parameters")
            if name not in used:
                raise ValueError(f"merge method {self.method!r} has no parameter {name!r} to "
                                 f"evolve; it evolves: {', '.join(used)}")
        if len(set(self.evolve)) != len(self.evolve):
            raise ValueError(f"merge.evolve lists a parameter twice: {list(self.evolve)}")
        for name, value in self.parameters.items():
            if name in self.evolve:
                raise ValueError(f"{name!r} is both evolved and fixed in merge.parameters")
            known = [*used, *flags, *fixed_only(self.method)]
            if name not in known:
                raise ValueError(f"merge method {self.method!r} has no parameter {name!r}; "
                                 f"known: {', '.join(known)}")
            if (name in flags) != isinstance(value, bool):
                raise ValueError(f"merge.parameters.{name} must be "
                                 f"{'true or false' if name in flags else 'a number'}")
        for name, (low, high) in self.bounds.items():
            if name not in self.evolve:
                raise ValueError(f"merge.bounds.{name}: {name!r} is not evolved")
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"merge.bounds.{name}: need finite low < high, got [{low}, {high}]")
        return self

    def bounds_of(self, name: str) -> tuple[float, float]:
        return tuple(self.bounds.get(name, DEFAULT_BOUNDS[name]))


class GroupingSection(_Strict):
    layers: Literal["all", "per_layer"] | PositiveInt = "all"
    split_attn_mlp: bool = False
    globals: Literal["own", "nearest"] = "own"

    def layers_per_group(self, num_layers: int) -> int:
        if self.layers == "all":
            return num_layers
        return 1 if self.layers == "per_layer" else min(int(self.layers), num_layers)


class StrategySection(_Strict):
    name: str = "CMA_ES"
    population_size: PositiveInt | None = None
    generations: PositiveInt = 100
    mean: float = 0.5
    sigma: float = Field(DEFAULT_SIGMA, gt=0)
    seed: int = 0
    # Generation 0 scores the initial mean itself as its first candidate: a DFS mean decodes to
    # model A exactly (in ps+dfs, the PS result), so the run can never select below its start.
    include_mean: bool = False
    params: dict[str, float | int | bool] = Field(default_factory=dict)
    options: dict[str, float | int | bool | str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self):
        names = algorithms()  # evolve/strategy.py: evosax loads on first use
        if self.name not in names:
            raise ValueError(f"unknown evosax algorithm {self.name!r}; choose one of "
                             f"{', '.join(sorted(names, key=str.lower))}")
        if self.population_size == 1:
            raise ValueError("population_size must be at least 2")
        return self

    def population_for(self, num_dims: int) -> int:
        """The configured size, else CMA-ES's default 4 + floor(3 ln D) (Hansen 2016, Table 1)."""
        return self.population_size or 4 + int(math.floor(3 * math.log(num_dims)))


# The paper's DFS stage (Akiba et al. 2025, section 3.2): CMA-ES, population 128, 100 generations.
# Built unvalidated (the values are known good): validating would load evosax at import (see
# strategy._evosax).
DFS_STRATEGY = StrategySection.model_construct(name="CMA_ES", population_size=128, generations=100)


class M2N2Section(_Strict):
    """`search: m2n2` (searches/m2n2.py, Sakana's M2N2): an archive of `archive_size` merge
    recipes; each generation breeds `children` by split-point crossover and gaussian mutation;
    fitness per example is shared by resource competition with exponent `alpha` (0: no sharing,
    plain sum)."""

    archive_size: int = Field(8, ge=2)
    alpha: float = Field(1.0, ge=0)
    children: PositiveInt = 4
    # where a split point may fall: a layer-group boundary (the child is a PS recipe), or any
    # parameter index of the flattened model (the child is a split recipe, ps/split_genome.py)
    split: Literal["layer", "parameter"] = "layer"
    mutation_rate: float = Field(0.1, ge=0, le=1)  # share of a child's genes mutated (0: none)
    mutation_scale: float = Field(0.05, ge=0)      # sigma of the gaussian step, in gene units


class DFSSection(_Strict):
    """Data-flow-space search (see dfs/search.py): a path through models A and B's layers
    repeated r times. `search: dfs`: A and B default to the first two `models`; `search: ps+dfs`:
    A is the PS stage's result (not configurable) and B defaults to the first of `models`."""

    a: Path | None = None
    b: Path | None = None
    repeats: int = 3
    fix_ends: bool = True
    scale_mode: Literal["matrix", "mlp"] = "matrix"
    mlp_hidden: PositiveInt = 16
    entry_scale: float = 1.0
    evolve_entry_scale: bool = False
    strategy: StrategySection | None = None  # ps+dfs only: the DFS stage (default DFS_STRATEGY)

    @model_validator(mode="after")
    def _check(self):
        if self.repeats < 1:
            raise ValueError(f"dfs.repeats (r) must be at least 1, got {self.repeats}")
        if not math.isfinite(self.entry_scale) or self.entry_scale == 0:
            raise ValueError(f"dfs.entry_scale must be finite and non-zero, got {self.entry_scale}")
        return self


class SplitFiles(_Strict):
    fitness: Path
    validation: Path
    test: Path


class TaskSection(_Strict):
    name: str
    type: str  # a name in task_types.TASK_TYPES
    data: SplitFiles | None = None   # types that read JSONL files (not lm_eval)
    prompt: str | None = None
    chat_template: bool = False      # prompts through the tokenizer's chat template (chat.py)
    system_prompt: str | None = None
    lm_eval: LmEvalSection | None = None
    weight: float = 1.0
    batch_size: PositiveInt = 32
    target: str = ""
    append_eos: bool = True
    max_new_tokens: PositiveInt = 64
    stop: tuple[str, ...] = ()
    answer_regex: str = r"-?\d+(?:\.\d+)?"
    compare: Literal["numeric", "string", "rouge_l"] = "numeric"
    rouge_tokenizer: str = "default"  # compare rouge_l: default|whitespace|chars|MODULE:CALLABLE
    choices: str = "choices"
    label: str = "label"
    metric: Literal["acc", "acc_norm"] = "acc"

    @model_validator(mode="after")
    def _check(self):
        kind = TASK_TYPES.get(self.type)
        if kind is None:
            raise ValueError(f"task {self.name!r}: unknown type {self.type!r}; choose one of "
                             f"{', '.join(TASK_TYPES)}")
        common = {"name", "type", "weight", "batch_size", "chat_template", "system_prompt",
                  *(("data", "prompt") if kind.reads_files else ())}
        stray = sorted(self.model_fields_set - common - kind.keys)
        if stray:
            raise ValueError(f"task {self.name!r}: key(s) {', '.join(stray)} do not apply to type "
                             f"{self.type!r} (it reads: {', '.join(sorted(kind.keys))})")
        for key in ("data", "prompt") if kind.reads_files else ("lm_eval",):
            if getattr(self, key) is None:
                raise ValueError(f"task {self.name!r}: type {self.type!r} needs {key}")
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError(f"task {self.name!r}: system_prompt needs chat_template: true")
        if kind.needs_target and "target" not in self.model_fields_set:
            raise ValueError(f"task {self.name!r}: type {self.type!r} needs a target template")
        if "rouge_tokenizer" in self.model_fields_set:
            if self.compare != "rouge_l":
                raise ValueError(f"task {self.name!r}: rouge_tokenizer applies to compare: rouge_l")
            resolve_tokenizer(self.rouge_tokenizer)  # a one-line ValueError when it cannot load
        if self.type == "perplexity" and not (self.target or self.prompt):
            raise ValueError(f"task {self.name!r}: perplexity needs a prompt or target template")
        return self


class MeshSection(_Strict):
    """The device mesh: `pop` devices score different candidates, `model` devices split each
    weight tensor (see parallel/mesh.py). `pop` defaults to the devices left over by `model`."""

    pop: PositiveInt | None = None
    model: PositiveInt = 1


class ComputeSection(_Strict):
    mesh: Literal["auto"] | MeshSection = "auto"
    memory_budget: str | None = None
    chunk_size: PositiveInt | None = None
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    prng: Literal["hash", "threefry"] = "hash"
    kernels: Literal["auto", "pallas", "jnp"] = "auto"  # the PS merge's backend (kernels/)
    generation: Literal["auto", "cached", "remerge"] = "auto"  # PS generate: memory_model.py


class GradientSection(_Strict):
    """`search: gradient` (searches/gradient.py): the PS genome's coefficients learned by Adam
    through the merge and the forward pass; masks (DARE, DELLA) drawn once with the run's seed."""

    loss: Literal["nll", "entropy"] = "nll"  # mean NLL of targets | entropy of the next token
    steps: PositiveInt = 50
    learning_rate: float = Field(0.05, gt=0)
    batch: PositiveInt | None = None  # rows per task per step; default: the task's batch_size
    validate_every: PositiveInt = 1   # steps between validation passes (the best is chosen there)
    # the hybrid (searches/gradient_hybrid.py): these evolved parameters' genes (densities, ...)
    # are evolved by the strategy section's algorithm; the others learned by Adam per candidate
    evolve: tuple[str, ...] = ()
