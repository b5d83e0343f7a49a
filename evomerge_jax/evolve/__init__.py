"""What every search shares: the evolve config (`config.py`), fitness tasks and their metrics
(`tasks.py`, `metrics.py`), the sharded, chunked population evaluator (`evaluate.py`), the evosax
strategy (`strategy.py`), the generation loop with checkpoints and logs (`loop.py`, over the
`Search` protocol that `ps/` and `dfs/` implement) and plots and tables (`report.py`)."""
