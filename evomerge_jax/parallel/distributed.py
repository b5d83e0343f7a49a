"""Several processes (hosts) running one search: start-up, the main process, barriers.

Every process runs the same program: the same config, the same evosax strategy with the same seed,
hence the same genomes, minibatches and merge keys, with no messages beyond the pass's own
collectives. The mesh spans `jax.devices()` (every process's devices); each process reads from the
model files only the weight blocks its devices hold (mesh.read_global); the pass's outputs are
replicated, so each process reads every candidate's scores. Process 0 alone writes the run dir
(logs, best.json, plots, results.json, the export); orbax checkpoints are written with every
process taking part (orbax's own protocol: the primary host writes numpy state and metadata). The
run dir must lie on a file system every process sees, for `--resume`.

Start-up: `--coordinator HOST:PORT --num-processes N --process-id I` names everything;
`--distributed` calls plain `jax.distributed.initialize()`, which finds its cluster itself on
Cloud TPU, Slurm (srun) and Open MPI launches, and reads JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID otherwise. On CPU the collectives run over gloo.

Failure. When a peer dies or cannot be reached, JAX's distributed runtime aborts the process from
C++ (a fatal log line and a stack trace, no Python exception), after `timeout_s` at start-up or
`heartbeat_s` of silence later (`--heartbeat`). So `supervise` runs the command in a child
process and turns such an abort into one `error:` line that says how to go on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

from ..errors import EvomergeError

_CHILD = "EVOMERGE_DISTRIBUTED_CHILD"
_FATAL = re.compile(r"^F\d{4} [\d:.]+\s+\d+ \S+\] (.*)")  # absl's fatal log line

HEARTBEAT_S = 60  # by default a peer silent this long counts as dead (`--heartbeat`)


class DistributedError(EvomergeError):
    """The processes of a multi-process run could not start together, or one of them failed."""


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300,
               heartbeat_s: int = HEARTBEAT_S) -> None:
    """Join the run's processes (before any other JAX call). With no coordinator, JAX detects
    the cluster (TPU pod, Slurm, MPI) or reads the JAX_* variables."""
    explicit = (coordinator, num_processes, process_id)
    if any(x is not None for x in explicit) and not all(x is not None for x in explicit):
        raise DistributedError("--coordinator, --num-processes and --process-id go together: "
                               "give all three, or --distributed alone to detect the cluster")
    if heartbeat_s < 1:
        raise DistributedError(f"--heartbeat must be at least 1 second, got {heartbeat_s}")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id {process_id} is not in 0..{num_processes - 1}")
    # CPU collectives across processes need gloo; the setting touches nothing but the CPU client.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id,
                                   initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=heartbeat_s)
    except Exception as exc:  # noqa: BLE001 - XLA raises several types; all mean the same here
        where = f"the coordinator {coordinator}" if coordinator else "the cluster's coordinator"
        raise DistributedError(f"could not start with {where} within {timeout_s} s "
                               f"({_first_line(exc)}); start every process with the same "
                               "coordinator and process count") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def is_main() -> bool:
    """True in the process that writes the run dir (process 0; the only one when alone)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait for every process (no-op when alone): after process 0 writes what others read."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(values: tuple[int, ...]) -> tuple[int, ...]:
    """Process 0's values on every process (plans made from each host's own free memory must
    not differ: every process has to run the very same programs)."""
    if jax.process_count() == 1:
        return tuple(values)
    return tuple(int(v) for v in multihost_utils.broadcast_one_to_all(np.asarray(values)))


def peer_failure(exc: BaseException) -> DistributedError | None:
    """The one-line error of a runtime failure in a multi-process run (a peer died, a collective
    timed out), or None when running alone."""
    if jax.process_count() == 1:
        return None
    return DistributedError(f"process {jax.process_index()}: a step with the other processes "
                            f"failed ({_first_line(exc)}); a peer may have died: rerun every "
                            "process with --resume")


def is_child() -> bool:
    return os.environ.get(_CHILD) == "1"


def supervise(argv: list[str], process_id: int | None, coordinator: str | None,
              timeout_s: int) -> int:
    """Run `evomerge ARGV` in a child process, passing its output through; returns its exit code,
    or 2 after one `error:` line when the distributed runtime aborted it (see the module doc)."""
    child = subprocess.Popen([sys.executable, "-m", "evomerge_jax.cli", *argv],
                             env={**os.environ, _CHILD: "1"}, stderr=subprocess.PIPE, text=True)
    fatal, dump = None, []
    for line in child.stderr:
        match = _FATAL.match(line)
        if match and fatal is None:
            fatal = match.group(1)
        if fatal is None:
            sys.stderr.write(line)
        else:  # the abort's own lines (status, RPC, stack trace) are summed up below
            dump.append(line)
    code = child.wait()
    if fatal is None and code >= 0:
        return code
    who = "this process" if process_id is None else f"process {process_id}"
    status = next(iter(re.findall(r"absl::Status: (.*)", fatal or "")), "") or (
        fatal or f"killed by signal {-code}")
    text = "".join(dump)
    if "RegisterTask" in text or "::Connect()" in text:
        where = coordinator or "the cluster's coordinator"
        print(f"error: {who} could not start with the coordinator {where} within {timeout_s} s "
              f"({status}); start every process with the same --coordinator and "
              "--num-processes, each with its own --process-id", file=sys.stderr)
    else:
        print(f"error: {who}: the run's processes lost contact ({status[:200]}); a peer died or "
              "hung: rerun every process with --resume", file=sys.stderr)
    return 2
