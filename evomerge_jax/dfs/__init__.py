"""Data-flow-space (DFS) merging: a path through the layers of several models (Akiba et al. 2025,
section 3.2), evaluated for a whole population in one compiled pass and exported as a plain
checkpoint.

    genome.py    PathSpec (slot and gene layout), initial_genome, decode (pure jnp), genome_for
    path.py      LayerPath: the host view of a decoded path; path.json round trip
    stack.py     the sources' layers stacked [M, ...] behind A's embeddings and head
    forward.py   population pass over the slots; single-path forward over its used layers
    generate.py  greedy generation with a KV cache per used slot (one path or a population)
    export.py    fold the scales into an ordinary HF checkpoint (+ path.json, path.png)
    plot.py      the picture of a path
"""

from .export import fold_path, known_path_target, save_path_model
from .forward import (logits_of_path, path_hidden, path_logits, population_hidden,
                      population_logits, run_slots)
from .generate import path_generate, population_generate, slots_generate
from .genome import DecodedPath, PathSpec, decode, decode_population, genome_for, initial_genome
from .path import LayerPath, decode_path, decode_paths
from .plot import plot_path
from .stack import check_compatible, path_spec_for, stack_sources

__all__ = ["DecodedPath", "LayerPath", "PathSpec", "check_compatible", "decode", "decode_path",
           "decode_paths", "decode_population", "fold_path", "genome_for", "initial_genome",
           "known_path_target", "logits_of_path", "path_generate", "path_hidden", "path_logits",
           "path_spec_for", "plot_path", "population_generate", "population_hidden",
           "population_logits", "run_slots", "save_path_model", "slots_generate", "stack_sources"]
