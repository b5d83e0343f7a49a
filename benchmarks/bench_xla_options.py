"""One jitted merge of an embedding-sized tensor, compiled with XLA:CPU's default options and with
`evolve.xla_options.merge_jit` (what `evomerge merge` and the evolve passes use), side by side.

On jaxlib 0.10 CPU, a sum over the stacked-sources axis fused with its elementwise producers runs
far slower with the default options (see xla_options.py). Prints each method's times and ratio,
and checks that both programs give the same tensor.

    python benchmarks/bench_xla_options.py [--rows 8000] [--cols 512] [--sources 2]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from evomerge_jax.parallel.xla_options import merge_jit
from evomerge_jax.merge.methods import merge_tensor

PARAMS = {"task_arithmetic": {"weight": (1.0, 0.5)},
          "linear": {"weight": (0.3, 0.7)}}


def best_time(fn, *args, rounds: int = 2) -> tuple[float, jax.Array]:
    out = fn(*args).block_until_ready()  # compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn(*args).block_until_ready()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8000)
    parser.add_argument("--cols", type=int, default=512)
    parser.add_argument("--sources", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = jnp.asarray(rng.standard_normal((args.rows, args.cols), np.float32))
    noise = rng.standard_normal((args.sources, args.rows, args.cols), np.float32)
    sources = base[None] + 0.01 * jnp.asarray(noise)
    print(f"[{args.sources}, {args.rows}, {args.cols}] float32 on {jax.devices()[0].platform}")
    for method, params in PARAMS.items():
        params = {k: v[:args.sources] if isinstance(v, tuple) else v for k, v in params.items()}

        def merge(b, s, method=method, params=params):
            if method == "linear":  # no separate base: a weighted sum of the sources alone
                return merge_tensor(method, None, s, dict(params), None)
            return merge_tensor(method, b, s, dict(params), None)

        default, out_a = best_time(jax.jit(merge), base, sources)
        tuned, out_b = best_time(merge_jit(merge), base, sources)
        same = bool(jnp.array_equal(out_a, out_b))
        print(f"  {method:<16} default {default:7.3f} s   merge_jit {tuned:7.3f} s   "
              f"ratio {default / tuned:5.1f}x   identical output: {same}")


if __name__ == "__main__":
    main()
