"""The `optimum-resp` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import warnings
from collections.abc import Iterator

from . import demo, export_gguf, info, prune
from . import eval as eval_command

EPILOG = """examples:
  optimum-resp prune Qwen/Qwen3-8B --sparsity 0.4 --calibration openai/gsm8k --output qwen3-8b-resp40
  optimum-resp eval qwen3-8b-resp40 --task gsm8k --data openai/gsm8k --limit 200
  optimum-resp info qwen3-8b-resp40
  optimum-resp export-gguf qwen3-8b-resp40 --outfile qwen3-8b-resp40.gguf --outtype q8_0
  optimum-resp demo

exit codes: 0 success, 1 failure while running, 2 bad usage or bad input, 130 interrupted
"""

# Each command module exposes `register(subparsers)` and sets `func` on its parser.
COMMANDS = (prune, eval_command, info, export_gguf, demo)


def add_commands(parser: argparse.ArgumentParser) -> None:
    """Add the subcommands to a parser (ours, or optimum-cli's `resp` parser)."""
    subparsers = parser.add_subparsers(dest="resp_command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="optimum-resp",
        description="RESP: self-reflective structured pruning for reasoning language models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging, and the warnings, log lines and progress bars of the libraries underneath",
    )
    add_commands(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 success, 1 failure while running, 2 bad usage or bad input, 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["optimum-resp", *(sys.argv[1:] if argv is None else argv)])
    return run_parsed(args, parser)


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """Our log lines and one progress bar per phase; the libraries underneath (transformers, datasets, peft,
    torch) keep their warnings, info lines and bars (weight loading, shard writing, split generation) for
    --verbose. Restored on exit, so an in-process caller keeps its own settings."""
    if verbose:
        yield
        return
    import datasets
    import transformers

    t_log, d_log = transformers.logging, datasets.logging
    saved = (t_log.get_verbosity(), t_log.is_progress_bar_enabled(), d_log.get_verbosity())
    saved_bars = datasets.is_progress_bar_enabled()
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning):
            warnings.simplefilter("ignore", category)
        t_log.set_verbosity_error()
        t_log.disable_progress_bar()
        d_log.set_verbosity_error()
        datasets.disable_progress_bars()
        try:
            yield
        finally:
            t_log.set_verbosity(saved[0])
            if saved[1]:
                t_log.enable_progress_bar()
            d_log.set_verbosity(saved[2])
            if saved_bars:
                datasets.enable_progress_bars()


def run_parsed(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run a parsed subcommand and turn its outcome into an exit code."""
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("optimum_resp").setLevel(logging.DEBUG if verbose else logging.INFO)
    if not getattr(args, "resp_func", None):
        parser.print_help()
        return 2
    if not hasattr(args, "command_line"):
        args.command_line = shlex.join(["optimum-cli", *sys.argv[1:]])
    name = args.resp_command
    try:
        with quiet_libraries(verbose):
            return int(args.resp_func(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: the message says what was wrong and the fix
        print(f"optimum-resp {name}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"optimum-resp {name}: interrupted (a prune resumes when run again)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a script-friendly exit code, with the cause
        logging.getLogger("optimum_resp").debug("failure", exc_info=True)
        print(f"optimum-resp {name}: failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
