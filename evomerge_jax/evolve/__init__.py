"""Evolutionary search over merges: parameter space (PS), data-flow space (DFS) and PS then DFS; the
loop, tasks, evaluation and checkpointing are generic over the search space (see `search.Search`).

Module map: config (YAML schema), genome (PS genome <-> recipe), population (the PS population
pass), tasks (data), metrics (task kernels and scores), evaluate (sharded, chunked scoring),
strategy (evosax), search (the loop, checkpoints, logs), ps (PS search assembly), dfs_search (DFS
search and the two-stage ps+dfs run), export (HF dir and mergekit recipe), report (plots, tables),
run (the CLI commands).
"""
