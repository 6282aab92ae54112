"""`ConfigMixin`: the one dict form of every config dataclass, and the one rule for keys it does not know.

`RESPConfig` and its sections, `GenerationSettings` and `EvalConfig` all read and write dicts the same way:
`to_dict` is the fields (a nested config as its own dict), `from_dict` lays a dict over the defaults, and a key
that is no field is refused naming the closest valid one, so a typo never passes as a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Collection, Mapping
from typing import Any, Literal, TypeVar

from .validation import check_choice

__all__ = ["ConfigMixin", "check_keys", "to_plain"]

C = TypeVar("C", bound="ConfigMixin")


def check_keys(kind: str, keys: Collection[str], valid: Collection[str]) -> None:
    """Refuse keys that are not in `valid`, naming the closest valid one (difflib) and every valid one."""
    unknown = sorted(set(keys) - set(valid))
    if not unknown:
        return
    close = {k: difflib.get_close_matches(k, list(valid), n=1) for k in unknown}
    hints = ", ".join(f"{k!r} (did you mean {m[0]!r}?)" if m else repr(k) for k, m in close.items())
    raise ValueError(f"Unknown {kind} key(s) {hints}; valid keys: {sorted(set(valid))}.")


def to_plain(value: Any) -> Any:
    """A field's JSON form: a nested config as its dict, lists and dicts copied, the rest as is."""
    if isinstance(value, ConfigMixin):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: to_plain(v) for k, v in value.items()}
    return value


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[Any, ...]]:
    """{field: its Literal's values} for every `Literal[...]` field of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: typing.get_args(hints[f.name])
        for f in dataclasses.fields(cls)
        if typing.get_origin(hints[f.name]) is Literal
    }


class ConfigMixin:
    """Dict round trips for a config dataclass: `to_dict`, `from_dict` (unknown keys refused), `coerce`."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain JSON-serialisable dict (nested configs as their own dicts)."""
        return {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def choices(cls, name: str) -> tuple[Any, ...]:
        """The values a `Literal` field accepts, read from its annotation (the one place they are written)."""
        return _literal_fields(cls)[name]

    @classmethod
    def from_dict(cls: type[C], values: Mapping[str, Any], defaults: C | None = None) -> C:
        """A config from a (partial) dict laid over `defaults` (or the class defaults); unknown keys are refused."""
        check_keys(cls.__name__, values, cls.field_names())
        return dataclasses.replace(defaults, **values) if defaults is not None else cls(**values)

    @classmethod
    def coerce(
        cls: type[C], value: C | Mapping[str, Any] | None, defaults: C | None = None, name: str = ""
    ) -> C:
        """An instance as is, a dict laid over `defaults` (`from_dict`), None as a copy of `defaults`."""
        if isinstance(value, cls):
            return value
        if value is None:
            return dataclasses.replace(defaults) if defaults is not None else cls()
        if isinstance(value, Mapping):
            return cls.from_dict(value, defaults)
        raise ValueError(
            f"{name or cls.__name__} must be a {cls.__name__} or a dict of its fields, got {value!r}"
        )

    def check_literals(self) -> None:
        """Refuse a `Literal` field holding a value it does not list."""
        for name, choices in _literal_fields(type(self)).items():
            check_choice(name, getattr(self, name), choices)
