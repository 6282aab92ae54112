"""The `optimum-resp` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import logging
import sys

from . import demo

EPILOG = """examples:
  optimum-resp demo                       prune a random-weight Qwen3 both ways, compare size and speed
  optimum-resp demo --sparsity 0.5 --output ./pruned
"""

# Each command module exposes `register(subparsers)` and sets `func` on its parser.
COMMANDS = (demo,)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-resp",
        description="RESP: self-reflective structured pruning for reasoning language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 failure while running, 2 bad usage or bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as err:  # bad input: the library's errors say what was wrong and how to fix it
        print(f"optimum-resp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
