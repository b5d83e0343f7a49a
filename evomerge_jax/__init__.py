"""evomerge_jax: evolutionary model merging (parameter space and data-flow space) in JAX.

The public API, what the `evomerge` command does, as functions:

- `load(model_dir)` -> `Checkpoint` (a LLaVA dir: `vlm.VlmCheckpoint`); `save(ckpt, out_dir)`;
  `logits(ckpt, input_ids, mask)`; `generate(ckpt, input_ids, max_new_tokens)` (a VLM also takes
  `pixel_values=`, `image_sizes=`): HF checkpoints in JAX.
- `merge(config_path, out_dir)`: a mergekit YAML config merged into an HF dir (`evomerge merge`).
- `load_evolve_config(config_path)` and `evolve(config_path)`: an evolve run (`evomerge evolve`).
"""

from pathlib import Path

from .api import generate, load, logits
from .checkpoint import Checkpoint, save
from .errors import CheckpointError, ConfigError, EvomergeError, MergeError
from .evolve.config import load_config as load_evolve_config
from .fileio import DEFAULT_SHARD_SIZE
from .merge.plan import load_plan
from .merge.run import run_plan
from .searches.run import evolve


def merge(config_path, out_dir, *, seed: int = 0, shard_size: int | str = DEFAULT_SHARD_SIZE,
          overwrite: bool = False, quiet: bool = True) -> Path:
    """Merge the models a mergekit YAML config names into the HF dir `out_dir` (written
    atomically; an existing dir is replaced only with `overwrite`). Every check that needs no
    tensor data runs before anything is written. `seed` seeds the random methods (dare_*, della*).
    Returns the output dir."""
    return run_plan(load_plan(config_path), out_dir, seed=seed, shard_size=shard_size,
                    overwrite=overwrite, quiet=quiet)


__all__ = ["Checkpoint", "CheckpointError", "ConfigError", "EvomergeError", "MergeError",
           "evolve", "generate", "load", "load_evolve_config", "logits", "merge", "save"]
