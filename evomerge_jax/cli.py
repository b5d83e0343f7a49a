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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evomerge", description="Evolutionary model merging in JAX: merge, evolve, export.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = sub.add_parser("info", help="describe a Hugging Face model dir without loading it")
    info.add_argument("model_dir", type=Path)
    info.set_defaults(func=_cmd_info)
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
