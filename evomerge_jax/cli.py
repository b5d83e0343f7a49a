"""The `evomerge` command. User errors print `error: <one line>` and exit 2, with no traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import EvomergeError


def _cmd_info(args) -> int:
    from .inspect import model_info
    for key, value in model_info(args.model_dir).items():
        print(f"{key:<14} {value}")
    return 0


def _cmd_merge(args) -> int:
    from .merge.plan import load_plan
    from .merge.run import run_plan
    plan = load_plan(args.config)  # every check that needs no tensor data, before any write
    out = run_plan(plan, args.out_dir, seed=args.seed, shard_size=args.shard_size,
                   overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {out}: {plan.method.name}, {len(plan.ops)} tensors, "
              f"{plan.spec.num_layers} layers, {plan.out_dtype}")
    return 0


def _cmd_evolve(args) -> int:
    from .evolve.run import evolve
    evolve(args.config, resume=args.resume, overwrite=args.overwrite)
    return 0


def _cmd_export(args) -> int:
    from .evolve.run import export_run
    export_run(args.run_dir, args.out_dir, overwrite=args.overwrite)
    return 0


def _cmd_eval(args) -> int:
    from .evolve.run import eval_model
    eval_model(args.model_dir, args.config, splits=tuple(args.split or ("validation", "test")))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    run_demo(args.out, quick=args.quick, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evomerge", description="Evolutionary model merging in JAX: merge, evolve, export.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="describe a Hugging Face model dir without loading it")
    info.add_argument("model_dir", type=Path)
    info.set_defaults(func=_cmd_info)
    evolve = sub.add_parser("evolve", help="search merge parameters with an evosax strategy")
    evolve.add_argument("config", type=Path, help="evolve config (YAML)")
    evolve.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    evolve.add_argument("--overwrite", action="store_true", help="replace a run in output_dir")
    evolve.set_defaults(func=_cmd_evolve)
    export = sub.add_parser("export", help="write a run's best candidate as a Hugging Face dir")
    export.add_argument("run_dir", type=Path)
    export.add_argument("out_dir", type=Path)
    export.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    export.set_defaults(func=_cmd_export)
    evaluate = sub.add_parser("eval", help="score a model dir on an evolve config's tasks")
    evaluate.add_argument("model_dir", type=Path)
    evaluate.add_argument("--config", type=Path, required=True, help="evolve config (YAML)")
    evaluate.add_argument("--split", action="append", choices=("fitness", "validation", "test"),
                          help="split(s) to score (default: validation and test)")
    evaluate.set_defaults(func=_cmd_eval)
    demo = sub.add_parser("demo", help="the main job: build the demo zoo, evolve merges, compare")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"),
                      help="output dir (the zoo is built or reused under OUT/zoo)")
    demo.add_argument("--quick", action="store_true", help="quick zoo and tiny searches (smoke run)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the zoo (default 0)")
    demo.set_defaults(func=_cmd_demo)
    merge = sub.add_parser(
        "merge", help="merge models from a mergekit-style YAML config into a Hugging Face dir",
        description="Merge models as a mergekit YAML config describes (model paths are local "
                    "dirs, relative to the current directory), tensor by tensor.")
    merge.add_argument("config", type=Path, metavar="CONFIG.yml",
                       help="the merge config (mergekit YAML)")
    merge.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                       help="the output model dir (must not exist, unless --overwrite)")
    merge.add_argument("--seed", type=int, default=0,
                       help="seed of the random methods (dare_*, della*); default 0")
    merge.add_argument("--shard-size", default="5GB", help="largest shard file, e.g. 5GB, 500MB")
    merge.add_argument("--overwrite", action="store_true",
                       help="replace out_dir if it exists (only once the new one is complete)")
    merge.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    merge.set_defaults(func=_cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except EvomergeError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
