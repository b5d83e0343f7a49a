"""The search registry: one frozen entry per `search:` name of an evolve config. Adding a search
means writing its `prepare` (every check, no weights), its `search_for` (a `Search` without
weights, for export) and one line here; the CLI, `evomerge plan`, export and the tests read this
dict. A multi-stage search gives its own `run` and the stage whose best is the run's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..dfs.search import dfs_search_for, prepare_dfs
from ..ps.search import prepare_ps, ps_search_for
from .gradient import prepare_gradient, run_gradient
from .m2n2 import m2n2_search_for, prepare_m2n2, run_m2n2
from .pareto import prepare_pareto, run_pareto
from .ps_dfs import evolve_ps_dfs, prepare_ps_dfs


@dataclass(frozen=True)
class SearchEntry:
    name: str
    summary: str
    prepare: Callable  # (cfg, log) -> what the run needs, every input checked, no weights read
    search_for: Callable | None = None  # cfg -> its `Search` with no weights (export)
    run: Callable | None = None  # a runner of its own (several stages, or its own loop such as
    # pareto's); None: one `stage.evolve_stage`
    result_stage: str | None = None  # the run dir's subdir whose best is the run's result


SEARCHES: dict[str, SearchEntry] = {
    "ps": SearchEntry("ps", "parameter space: merge weights and densities per layer group and "
                      "source (Akiba et al. 2025, section 3.1)", prepare_ps, ps_search_for),
    "dfs": SearchEntry("dfs", "data-flow space: a path through two models' layers with scales "
                       "(section 3.2)", prepare_dfs, dfs_search_for),
    "ps+dfs": SearchEntry("ps+dfs", "PS, then DFS with the PS result as model A (section 3.3)",
                          prepare_ps_dfs, run=evolve_ps_dfs, result_stage="dfs"),
    "pareto": SearchEntry("pareto", "multi-objective PS: NSGA-II keeps the Pareto front of the "
                          "tasks named in `objectives`, chosen on validation", prepare_pareto,
                          ps_search_for, run=run_pareto),
    "gradient": SearchEntry("gradient", "PS's genome learned by Adam through the merge and the "
                            "forward pass, on the targets' NLL or the prompts' entropy",
                            prepare_gradient, ps_search_for, run=run_gradient),
    "m2n2": SearchEntry("m2n2", "M2N2 (Sakana, GECCO 2025): an archive of PS recipes bred by "
                        "split-point crossover, resource competition per example and "
                        "attraction-based mate choice", prepare_m2n2, m2n2_search_for,
                        run=run_m2n2),
}
