"""`python -m evomerge_jax.zoo OUT_DIR [--seed N] [--quick]`: build or find the demo zoo."""

import argparse

from .build import build_zoo

parser = argparse.ArgumentParser(prog="python -m evomerge_jax.zoo", description=__doc__)
parser.add_argument("out_dir")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--quick", action="store_true", help="a smaller zoo for smoke runs")
args = parser.parse_args()
build_zoo(args.out_dir, seed=args.seed, quick=args.quick, progress=True)
