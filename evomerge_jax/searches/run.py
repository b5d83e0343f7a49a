"""The commands built on the searches: `evolve` (search, then score and export the best), `export`
(any run's best as an HF dir) and `eval` (any model dir on a config's tasks).

Every check that can fail on user input (config, model dirs, task files, strategy) runs in the
search's `prepare` before any weight is loaded or any function compiled.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..evolve.config import EvolveConfig, load_config
from ..evolve.report import print_table, score_table
from ..evolve.tasks import load_tasks, load_tokenizer
from ..evolve.vision import tokenizer_dir, vision_for
from ..parallel.distributed import is_main
from ..sources import source_config
from .pareto import export_point
from .registry import SEARCHES
from .stage import check_mesh, evolve_stage, export_stage, score_model


def prepare(cfg: EvolveConfig, log=print):
    """Every check of a config's search before any weight is read (its registry entry's
    `prepare`); for a one-stage search: (search, tasks, tokenizer, strategy)."""
    check_mesh(cfg)
    return SEARCHES[cfg.search].prepare(cfg, log)


def evolve(config_path, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
           log=print, devices=None, on_generation=None, export: bool = True) -> dict:
    """Run a search end to end; returns the results written to RUN_DIR/results.json. In a
    multi-process run (parallel/distributed.py) every process calls this; process 0 alone logs and
    writes."""
    cfg = load_config(config_path)
    if not is_main():
        progress, log = False, _silent
    options = dict(progress=progress, log=log, devices=devices, on_generation=on_generation,
                   export=export)
    entry = SEARCHES[cfg.search]
    if entry.run is not None:
        return entry.run(cfg, resume=resume, overwrite=overwrite, **options)
    return evolve_stage(cfg, entry.prepare, resume=resume, overwrite=overwrite, **options)


def _silent(*_args) -> None:
    pass


def _no_front(run_dir):
    raise ConfigError(f"{run_dir}: --point exports a point of a search: pareto run's front; this "
                      "run has none")


def eval_model(model_dir, config_path, splits=("validation", "test"), log=print) -> dict:
    """`evomerge eval`: a model dir on a config's tasks, with the model dir's own tokenizer when
    it has one (else the config's)."""
    cfg = load_config(config_path)
    root, hf_config, _ = source_config(model_dir)
    has_tokenizer = (root / "tokenizer.json").is_file() or (root / "tokenizer.model").is_file()
    tokenizer = load_tokenizer(root if has_tokenizer else tokenizer_dir(cfg, cfg.base_model))
    vision = vision_for(cfg)  # a VLM config: the model is scored behind its vision side
    tasks = load_tasks(cfg.tasks, tokenizer, hf_config.get("max_position_embeddings"), vision)
    scores = score_model(model_dir, tasks, tokenizer, splits, cfg.compute.dtype, log, vision)
    print_table(score_table({Path(model_dir).name: scores}, title=str(model_dir)))
    return scores


def export_run(run_dir, out_dir, *, overwrite: bool = False, log=print,
               point: int | None = None) -> Path:
    """`evomerge export`: the best candidate of a run (finished or not) as an HF dir; `point`:
    point K of a pareto run's front instead."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yml").is_file():
        raise ConfigError(f"{run_dir}: not a run dir (no config.yml)")
    entry = SEARCHES[load_config(run_dir / "config.yml").search]
    if point is not None:
        return export_point(run_dir, point, entry.search_for or _no_front(run_dir), out_dir,
                            overwrite=overwrite, log=log)
    if entry.result_stage is not None:  # a multi-stage run: its final stage's best
        return export_run(run_dir / entry.result_stage, out_dir, overwrite=overwrite, log=log)
    return export_stage(run_dir, entry.search_for, out_dir, overwrite=overwrite, log=log)
