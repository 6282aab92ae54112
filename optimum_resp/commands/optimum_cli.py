"""`optimum-cli resp ...`: the same subcommands as `optimum-resp`, mounted in optimum's CLI."""

from __future__ import annotations

import sys

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo


class RESPCommand(BaseOptimumCLICommand):
    COMMAND = CommandInfo(name="resp", help="RESP structured pruning for reasoning models (optimum-resp)")

    @staticmethod
    def parse_args(parser) -> None:
        from .cli import add_commands

        add_commands(parser)

    def run(self) -> None:
        from .cli import run_parsed

        code = run_parsed(self.args, self.parser)
        if code:
            sys.exit(code)
