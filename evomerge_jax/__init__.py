"""evomerge_jax: evolutionary model merging (parameter space and data-flow space) in JAX."""

from .api import generate, logits
from .checkpoint import Checkpoint, load, save
from .errors import CheckpointError, ConfigError, EvomergeError, MergeError

__all__ = ["Checkpoint", "CheckpointError", "ConfigError", "EvomergeError", "MergeError",
           "generate", "load", "logits", "save"]
