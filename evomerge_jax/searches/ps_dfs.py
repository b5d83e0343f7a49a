"""The two-stage search `ps+dfs` (Akiba et al. 2025, section 3.3): PS, then DFS with the PS result as
model A.

ps+dfs. One run in RUN_DIR: the PS stage is an ordinary run in RUN_DIR/ps (config.yml, log,
checkpoints, results.json), its best exported to RUN_DIR/ps/model; the DFS stage is an ordinary
DFS run in RUN_DIR/dfs with A = RUN_DIR/ps/model and B = `dfs.b` (default: the first of `models`),
under `dfs.strategy` (default: the paper's CMA-ES, population 128, 100 generations). `--resume`
continues whichever stage was interrupted; a finished PS stage (results.json and model/ present)
is not rerun.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..dfs.search import prepare_dfs
from ..evolve.config import EvolveConfig
from ..evolve.config_sections import DFS_STRATEGY
from ..fileio import atomic_write_text
from ..parallel.distributed import barrier, is_main
from ..ps.search import prepare_ps, ps_search_for
from .stage import check_mesh, evolve_stage, export_stage, start_run_dir


def stage_configs(cfg: EvolveConfig) -> tuple[EvolveConfig, EvolveConfig]:
    """The two stages of a ps+dfs config as ordinary configs (PS in RUN_DIR/ps; DFS in
    RUN_DIR/dfs with A = RUN_DIR/ps/model, under dfs.strategy)."""
    data = cfg.model_dump(mode="json", exclude_unset=True)
    dfs = dict(data.pop("dfs", None) or {})
    run_dir = Path(cfg.output_dir)
    ps = EvolveConfig.model_validate({**data, "search": "ps", "output_dir": str(run_dir / "ps")})
    strategy = dfs.pop("strategy", None) or DFS_STRATEGY.model_dump(mode="json",
                                                                    exclude_unset=True)
    dfs.update(a=str(run_dir / "ps" / "model"), b=dfs.get("b") or str(cfg.models[0]))
    stage = {**data, "search": "dfs", "output_dir": str(run_dir / "dfs"), "strategy": strategy,
             "dfs": dfs}
    return ps, EvolveConfig.model_validate(stage)


def prepare_ps_dfs(cfg: EvolveConfig, log=print):
    """Every check of both stages before any compute (the base model stands in for the PS result
    as DFS's model A). Returns the two stages' (search, tasks, tokenizer, strategy)."""
    ps_cfg, dfs_cfg = stage_configs(cfg)
    return prepare_ps(ps_cfg, log), prepare_dfs(dfs_cfg, log, a_stand_in=Path(cfg.base_model))


def evolve_ps_dfs(cfg: EvolveConfig, *, resume: bool = False, overwrite: bool = False, **kwargs):
    """Run (or resume) both stages; returns the DFS stage's results with the PS best under "ps"
    (also written to RUN_DIR/results.json). `kwargs`: those of `stage.evolve_stage`."""
    log = kwargs.get("log", print)
    ps_cfg, dfs_cfg = stage_configs(cfg)
    check_mesh(cfg)
    prepare_ps_dfs(cfg, log)
    run_dir = start_run_dir(cfg, resume, overwrite)
    ps_dir, model_dir = Path(ps_cfg.output_dir), Path(dfs_cfg.dfs.a)
    if (ps_dir / "results.json").is_file():
        log(f"PS stage finished earlier ({ps_dir}); not rerun")
    else:
        evolve_stage(ps_cfg, prepare_ps, resume=resume and (ps_dir / "config.yml").is_file(),
                     **{**kwargs, "export": False})
    export_a = not (model_dir / "config.json").is_file()
    barrier("ps+dfs: PS model checked")  # every process decided before process 0 writes it
    if export_a and is_main():
        export_stage(ps_dir, ps_search_for, model_dir, overwrite=True, log=log)
    barrier("ps+dfs: PS model written")
    dfs_dir = Path(dfs_cfg.output_dir)
    results = evolve_stage(dfs_cfg, prepare_dfs,
                           resume=resume and (dfs_dir / "config.yml").is_file(), **kwargs)
    results = {**results, "ps": json.loads((ps_dir / "results.json").read_text())["best"]}
    if is_main():
        atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return results
