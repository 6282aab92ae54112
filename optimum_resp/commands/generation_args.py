"""The decoding flags of `prune` and `eval`, generated from `GenerationSettings` (the one place they live)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..generation import GenerationSettings


def add_generation_arguments(
    parser: argparse.ArgumentParser, defaults: GenerationSettings, what: str, batch_flag: str
) -> None:
    """One flag per GenerationSettings field (`batch_flag` for batch_size, which `prune` must tell apart from
    its scoring batch); unset flags keep the config's value, shown as the default."""
    names = {"batch_size": [batch_flag]}
    group = parser.add_argument_group(f"decoding ({what}; GenerationSettings)")
    for f in dataclasses.fields(GenerationSettings):
        default = getattr(defaults, f.name)
        flags = names.get(f.name, [f"--{f.name.replace('_', '-')}"])
        kwargs: dict[str, Any] = {"dest": f"gen_{f.name}", "default": None, "help": f"default: {default}"}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(type=_checked(f.name, type(default)), metavar=type(default).__name__.upper())
        group.add_argument(*flags, **kwargs)


def _checked(name: str, cast: type) -> Any:
    """An argparse type reading one GenerationSettings field and checking it as the settings do, so a bad value
    is refused naming its flag ("argument --generation-batch-size: batch_size must be ...", exit 2)."""

    def parse(text: str) -> Any:
        value = cast(text)  # not a number: argparse's own "invalid int value"
        try:
            GenerationSettings.from_dict({name: value})
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return value

    parse.__name__ = cast.__name__
    return parse


def generation_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The decoding fields the user set on the command line."""
    values = {f.name: getattr(args, f"gen_{f.name}", None) for f in dataclasses.fields(GenerationSettings)}
    return {k: v for k, v in values.items() if v is not None}
