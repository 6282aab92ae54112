"""Field checks shared by the configs (RESPConfig, GenerationSettings, EvalConfig): one wording for every
refusal, naming the field, the valid values and what was given."""

from __future__ import annotations

from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_range"]


def check_bool(name: str, value: Any) -> None:
    """`value` is True or False (not 1, not "yes")."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    """`value` is one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}; got {value!r}.")


def check_range(
    name: str, value: Any, low: float, high: float, low_open: bool = False, high_open: bool = False
) -> None:
    """`value` is a number in the interval from `low` to `high` (each end closed unless said open)."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}; got {value!r}.")


def check_int(name: str, value: Any, minimum: int = 1) -> None:
    """`value` is an integer (not a bool) >= `minimum`."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")
