"""The searches as runs: the registry of `search:` names (`registry.py`), one stage of a run
(`stage.py`), the two-stage ps+dfs (`ps_dfs.py`), the `evolve` / `export` / `eval` commands
(`run.py`) and the memory plan of a config (`plan.py`, `evomerge plan`)."""
