"""One exception family for every error a user can cause.

The CLI catches `EvomergeError`, prints `error: <message>` on one line and exits 2. Messages say
what went wrong and where (file, key or tensor), and how to fix it where that is not obvious.
"""


class EvomergeError(Exception):
    """Base class: a problem with the user's input, not a bug in the engine."""


class CheckpointError(EvomergeError):
    """A model directory that cannot be read or written."""


class ConfigError(EvomergeError):
    """A YAML config or model config that fails validation."""


class MergeError(EvomergeError, ValueError):
    """Merge parameters or inputs that a merge method cannot accept."""
