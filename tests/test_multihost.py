"""Two processes on this machine run one search (`evomerge evolve --coordinator ...`, CPU
collectives over gloo, 2 simulated devices each, a 2 x 2 pop x model mesh spanning both), and
give the log, best candidate and exported tensors of a single-process run. Timeouts turn a hang
into a failure."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from evolve_world import echo_task, ppl_task, write_config
from evomerge_jax.searches.run import evolve

TIMEOUT_S = 300


def test_importing_the_cli_leaves_the_backend_to_jax_distributed():
    """`jax.distributed.initialize` must run before anything starts JAX's backend; the CLI calls
    it after its imports, so no module may touch the backend at import (evosax does: it loads on
    first use)."""
    probe = ("import evomerge_jax.cli, evomerge_jax.demo\n"
             "from jax._src import xla_bridge\n"
             "assert not xla_bridge._backends, 'a module started the backend at import'\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(cfg: Path, port: int, process_id: int, *extra: str,
            own_group: bool = False) -> subprocess.Popen:
    """One `evomerge evolve` process of two; `own_group`: in a process group of its own, so that
    a test can kill it with its supervised child. The processes of one config share a persistent
    compilation cache beside it, so a resumed run does not compile again."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": str(cfg.parent / "jax_cache"),
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    return subprocess.Popen(
        [sys.executable, "-m", "evomerge_jax.cli", "evolve", str(cfg), "--coordinator",
         f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(process_id), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).parent, start_new_session=own_group)


def _wait(procs) -> list[tuple[int, str, str]]:
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=TIMEOUT_S)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    return results


def _config(world, path: Path, **compute):
    return write_config(path, world, [echo_task(world), ppl_task(world)],
                        merge={"method": "task_arithmetic", "evolve": ["weight"]},
                        strategy={"population_size": 8, "generations": GENERATIONS, "seed": 0},
                        output_dir=str(path.parent / "run"), compute=compute)


def _log(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


def _floats(tree, out=None) -> list:
    out = [] if out is None else out
    if isinstance(tree, dict):
        for key in sorted(tree):
            _floats(tree[key], out)
    elif isinstance(tree, list):
        for x in tree:
            _floats(x, out)
    elif isinstance(tree, (int, float)) and tree is not None:
        out.append(float(tree))
    return out


pytestmark = pytest.mark.slow


GENERATIONS = 5


@pytest.fixture(scope="module")
def two_hosts(evolve_world, tmp_path_factory):
    """Two processes on a 2 x 2 mesh; process 1 is killed (SIGKILL, with its supervised child) once
    generation 0 is logged; both are then started again with --resume and finish the run, while the
    single-process reference runs in this process, on its one CPU device. `--heartbeat
    10`: process 0 gives up on its silent peer after 10 s (60 by default)."""
    import signal
    import time

    root = tmp_path_factory.mktemp("multihost")
    (root / "two").mkdir()
    cfg = _config(evolve_world, root / "two" / "cfg.yml", mesh={"pop": 2, "model": 2})
    port = _free_port()
    first = [_launch(cfg, port, 0, "--heartbeat", "10"),
             _launch(cfg, port, 1, "--heartbeat", "10", own_group=True)]
    log = root / "two" / "run" / "log.jsonl"
    deadline = time.time() + TIMEOUT_S
    while not (log.is_file() and log.read_text().strip()) and time.time() < deadline:
        time.sleep(0.2)
    assert log.is_file(), "generation 0 never finished"
    os.killpg(first[1].pid, signal.SIGKILL)
    killed = _wait(first[:1])[0]
    first[1].wait()
    done = len(log.read_text().splitlines())
    port = _free_port()
    resumed = [_launch(cfg, port, i, "--resume") for i in (0, 1)]
    (root / "one").mkdir()
    reference = evolve(_config(evolve_world, root / "one" / "cfg.yml"), progress=False,
                       log=lambda *_: None)
    resumed = _wait(resumed)
    return root, reference, killed, done, resumed


def test_a_peer_killed_mid_run_then_resume(two_hosts):
    """Process 0 ends with one line saying to rerun with --resume; both processes resumed finish
    the run with every generation logged once."""
    root, _, (rc, _, err), done, resumed = two_hosts
    assert rc == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: process 0: the run's processes lost contact"), err[-2000:]
    assert last.endswith("rerun every process with --resume")
    assert 1 <= done < GENERATIONS
    for code, _, err in resumed:
        assert code == 0, err[-3000:]
    lines = [json.loads(x) for x in (root / "two" / "run" / "log.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == list(range(GENERATIONS))


def test_two_processes_match_one(two_hosts):
    """The interrupted and resumed two-process run gives the single-process run's log, best
    candidate and exported tensors."""
    root, reference, _, _, outcome = two_hosts
    assert all(code == 0 for code, _, _ in outcome)
    two, one = root / "two" / "run", root / "one" / "run"
    log_two, log_one = _log(two), _log(one)
    assert [x["generation_best"]["candidate"] for x in log_two] == (
        [x["generation_best"]["candidate"] for x in log_one])
    np.testing.assert_allclose(_floats(log_two), _floats(log_one), rtol=1e-5)
    results = json.loads((two / "results.json").read_text())
    assert results["best"]["generation"] == reference["best"]["generation"]
    assert results["best"]["candidate"] == reference["best"]["candidate"]
    mine, theirs = load_file(two / "best" / "model.safetensors"), load_file(
        one / "best" / "model.safetensors")
    assert sorted(mine) == sorted(theirs)
    for name in mine:
        np.testing.assert_array_equal(mine[name], theirs[name], err_msg=name)
    assert "2 x 2 (pop x model) mesh" in outcome[0][1]
    # Process 1 logs nothing (process 0 speaks for the run); gloo itself prints its connections,
    # from several threads at once, so its lines can come out cut and interleaved.
    quiet = outcome[1][1]
    assert "generation" not in quiet and "mesh" not in quiet, quiet
    assert all("[Gloo]" in x or "peer ranks" in x for x in quiet.strip().splitlines()), quiet


def test_a_missing_peer_is_one_line(evolve_world, tmp_path):
    """Process 0 started alone: it gives up after --timeout with one line, exit 2."""
    cfg = _config(evolve_world, tmp_path / "cfg.yml")
    ((rc, _, err),) = _wait([_launch(cfg, _free_port(), 0, "--timeout", "5")])
    assert rc == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: process 0 could not start with the coordinator "
                                "127.0.0.1:"), err
    assert "stack trace" not in err  # the runtime's abort is summed up in that line
    assert not (tmp_path / "run").exists()


def test_a_heartbeat_under_one_second_is_refused():
    """Checked before anything starts JAX's distributed runtime (the CLI prints it in one line,
    exit 2)."""
    from evomerge_jax.parallel.distributed import DistributedError, initialize

    with pytest.raises(DistributedError, match="--heartbeat must be at least 1 second, got 0"):
        initialize("127.0.0.1:1", 2, 0, heartbeat_s=0)
