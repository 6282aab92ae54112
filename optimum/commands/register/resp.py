"""Registers `optimum-cli resp ...` (optimum discovers this file in its `optimum.commands.register` namespace).

Kept lightweight: the command class imports nothing heavy until it runs.
"""

from optimum_resp.commands.optimum_cli import RESPCommand

REGISTER_COMMANDS = [RESPCommand]
