"""The evolve config: a YAML file validated into frozen pydantic models when loaded.

Every default lives here and in config_sections.py (the sections). Paths are resolved against
the config file's folder. Checks that need no file beyond the YAML (names, bounds, which
parameters a method has) run in `load_config`; checks that read the model dirs and task files run
in each search's `prepare` (searches/registry.py), still before any compute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from ..errors import ConfigError
from .config_sections import (ComputeSection, DFSSection, GradientSection, GroupingSection,
                              M2N2Section, MergeSection, SplitFiles, StrategySection, TaskSection,
                              _Strict)
from .task_data import SPLITS
from .method_genes import source_count_error
from .task_types import TASK_TYPES



class EvolveConfig(_Strict):
    search: Literal["ps", "dfs", "ps+dfs", "pareto", "gradient", "m2n2"] = "ps"
    base_model: Path
    models: tuple[Path, ...] = Field(min_length=1)
    tokenizer: Path | None = None
    # EvoVLM (evolve/vision.py): a LLaVA dir whose language tower the sources merge into; its
    # vision tower and projector stay frozen. Search ps, dfs or ps+dfs.
    vision_model: Path | None = None
    merge: MergeSection = MergeSection()
    grouping: GroupingSection = GroupingSection()
    strategy: StrategySection = Field(default_factory=StrategySection)
    tasks: tuple[TaskSection, ...] = Field(min_length=1)
    compute: ComputeSection = ComputeSection()
    dfs: DFSSection | None = None
    output_dir: Path
    baselines: bool = True
    # search pareto (searches/pareto.py): the tasks whose scores are the objectives of NSGA-II
    objectives: tuple[str, ...] = ()
    gradient: GradientSection | None = None  # search gradient only (default GradientSection())
    # search m2n2 (searches/m2n2.py): archive size, competition exponent, children per generation
    m2n2: M2N2Section | None = None

    @model_validator(mode="after")
    def _check(self):
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        if all(t.weight == 0 for t in self.tasks):
            raise ValueError("every task has weight 0: nothing to optimise")
        dfs = self.dfs or DFSSection()
        if self.search == "ps" and self.dfs is not None:
            raise ValueError("the dfs section applies to search dfs or ps+dfs, not ps")
        if self.search == "dfs":
            if dfs.strategy is not None:
                raise ValueError("dfs.strategy is for the DFS stage of ps+dfs; search dfs uses "
                                 "the top-level strategy")
            if len(self.models) < (dfs.a is None) + (dfs.b is None):
                raise ValueError("search dfs needs models A and B: give dfs.a and dfs.b or at "
                                 "least two models")
        if self.search == "ps+dfs" and dfs.a is not None:
            raise ValueError("dfs.a cannot be set under ps+dfs: model A is the PS stage's result")
        if self.vision_model is not None and self.search not in ("ps", "dfs", "ps+dfs"):
            raise ValueError(f"vision_model applies to search ps, dfs or ps+dfs, not "
                             f"{self.search}")
        return self

    @model_validator(mode="after")
    def _check_source_count(self):
        problem = source_count_error(self.merge.method, len(self.models))
        if problem and self.search in ("ps", "pareto", "gradient", "m2n2"):
            raise ValueError(f"merge.method: {problem} (models)")
        return self

    @model_validator(mode="after")
    def _check_objectives(self):
        names = [t.name for t in self.tasks]
        if self.search != "pareto":
            if self.objectives:
                raise ValueError("objectives apply to search pareto only")
            return self
        if len(self.objectives) < 2 or len(set(self.objectives)) != len(self.objectives):
            raise ValueError("search pareto needs objectives: two or more distinct task names, "
                             f"got {list(self.objectives)}")
        unknown = [o for o in self.objectives if o not in names]
        if unknown:
            raise ValueError(f"objectives: {', '.join(unknown)} not among the tasks "
                             f"({', '.join(names)})")
        if self.dfs is not None:
            raise ValueError("the dfs section applies to search dfs or ps+dfs, not pareto")
        if "name" in self.strategy.model_fields_set:
            raise ValueError("search pareto selects by NSGA-II: strategy.name does not apply "
                             "(population_size, generations, mean, sigma and seed do)")
        return self

    @model_validator(mode="after")
    def _check_gradient(self):
        if self.search != "gradient":
            if self.gradient is not None:
                raise ValueError("the gradient section applies to search gradient only")
            return self
        if self.dfs is not None:
            raise ValueError("the dfs section applies to search dfs or ps+dfs, not gradient")
        hybrid = self.gradient.evolve if self.gradient else ()
        if "name" in self.strategy.model_fields_set and not hybrid:
            raise ValueError("search gradient learns by Adam: strategy.name does not apply "
                             "(mean and seed do; steps are gradient.steps; with gradient.evolve "
                             "the strategy evolves those genes)")
        unknown = [n for n in hybrid if n not in self.merge.evolve]
        if unknown:
            raise ValueError(f"gradient.evolve: {', '.join(unknown)} not among merge.evolve "
                             f"({', '.join(self.merge.evolve)})")
        if hybrid and set(hybrid) >= set(self.merge.evolve):
            raise ValueError("gradient.evolve names every evolved parameter: Adam would learn "
                             "none (use search ps)")
        return self

    @model_validator(mode="after")
    def _check_m2n2(self):
        if self.search != "m2n2":
            if self.m2n2 is not None:
                raise ValueError("the m2n2 section applies to search m2n2 only")
            return self
        if self.dfs is not None:
            raise ValueError("the dfs section applies to search dfs or ps+dfs, not m2n2")
        if "name" in self.strategy.model_fields_set or "population_size" in \
                self.strategy.model_fields_set:
            raise ValueError("search m2n2 breeds its own archive: strategy.name and "
                             "population_size do not apply (m2n2.archive_size, m2n2.children; "
                             "strategy.generations, mean, sigma and seed do)")
        lacking = [f"{t.name} ({t.type})" for t in self.tasks if TASK_TYPES[t.type].items is None]
        if lacking:
            raise ValueError("search m2n2 shares fitness per example, which these tasks' types do "
                             f"not score: {', '.join(lacking)}")
        return self


def _resolve(cfg: EvolveConfig, root: Path) -> EvolveConfig:
    def fix(path: Path | None) -> Path | None:
        return None if path is None else (path if path.is_absolute() else root / path)

    def task_paths(t: TaskSection) -> dict:  # only the keys a task set (dumped as given)
        if t.lm_eval is not None:
            return {"lm_eval": t.lm_eval.model_copy(
                update={"include_path": fix(t.lm_eval.include_path)})}
        return {"data": SplitFiles(**{s: fix(getattr(t.data, s)) for s in SPLITS})}

    tasks = tuple(t.model_copy(update=task_paths(t)) for t in cfg.tasks)
    return cfg.model_copy(update=dict(
        base_model=fix(cfg.base_model), models=tuple(fix(m) for m in cfg.models),
        tokenizer=fix(cfg.tokenizer), vision_model=fix(cfg.vision_model),
        output_dir=fix(cfg.output_dir), tasks=tasks,
        **({"dfs": cfg.dfs.model_copy(update={k: fix(getattr(cfg.dfs, k)) for k in ("a", "b")
                                              if getattr(cfg.dfs, k) is not None})}
           if cfg.dfs is not None else {})))


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def parse_config(data: object, where: str = "<config>", root: Path | None = None) -> EvolveConfig:
    """Validate a parsed YAML mapping; `where` names it in errors, `root` anchors relative paths."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    try:
        cfg = EvolveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {_one_line(exc)}") from None
    return _resolve(cfg, root or Path.cwd())


def load_config(path: str | Path) -> EvolveConfig:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from None
    return parse_config(data, str(path), path.resolve().parent)


def dump_config(cfg: EvolveConfig) -> str:
    """The validated config as YAML (paths absolute), saved in the run dir for export and resume."""
    return yaml.safe_dump(cfg.model_dump(mode="json", exclude_unset=True), sort_keys=False)
