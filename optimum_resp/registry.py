"""`Registry`: the one way a named choice is registered and looked up (architectures, importance
criteria, trace generators, evaluation tasks).

Every registry is a read-only mapping from a name to its entry. Entries are added with
`REGISTRY.register(name)` as a class decorator or `REGISTRY.register(name, entry)` as a call;
`REGISTRY.lookup(name)` returns the entry or raises one clear error that lists the valid names, and
the command line and config validation read their choices from the same object, so a new entry is
offered everywhere the moment it is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar, overload

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind.

    `kind` names the entries in errors ("importance criterion", "task", ...); `error` is the exception
    type `lookup` raises (a ValueError subclass); `hint` is appended to that error (how to add one);
    `normalize` maps a user-typed name to a registered one (e.g. case and dashes for tasks);
    `on_register(name, entry)` runs once per new entry (e.g. the Auto-class registration of an
    architecture's per_layer classes); `name_attr`, where set, is the entry's attribute that gets its
    registered name (a class decorated with `register("x")` then knows it is "x").
    """

    def __init__(
        self,
        kind: str,
        *,
        error: type[ValueError] = ValueError,
        hint: str = "",
        normalize: Callable[[str], str] | None = None,
        on_register: Callable[[str, T], None] | None = None,
        name_attr: str | None = None,
    ) -> None:
        self.kind = kind
        self.error = error
        self.hint = hint
        self._normalize = normalize or (lambda name: name)
        self._on_register = on_register
        self._name_attr = name_attr
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    @overload
    def register(self, name: str) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, entry: T, *, aliases: Sequence[str] = ()) -> T: ...

    def register(self, name: str, entry: Any = None, *, aliases: Sequence[str] = ()) -> Any:
        """Add `entry` under `name` (and `aliases`); without `entry`, a decorator that adds what it decorates.

        Registering the same entry again is a no-op; another entry under a taken name is an error.
        """
        if entry is None:
            return lambda obj: self.register(name, obj, aliases=aliases)
        for key in (name, *aliases):
            taken = self._entries.get(self._aliases.get(key, key))
            if taken is not None and taken is not entry:
                raise ValueError(f"A {self.kind} named {key!r} is already registered ({taken!r}).")
        new = name not in self._entries
        self._entries[name] = entry
        self._aliases.update({alias: name for alias in aliases})
        if self._name_attr is not None:
            setattr(entry, self._name_attr, name)
        if new and self._on_register is not None:
            self._on_register(name, entry)
        return entry

    def unregister(self, name: str) -> T:
        """Remove `name` (and its aliases) and return its entry; for plugins and tests that register temporarily."""
        entry = self._entries.pop(name)
        self._aliases = {a: n for a, n in self._aliases.items() if n != name}
        return entry

    def _key(self, name: str) -> str | None:
        """The registered name `name` stands for: itself, an alias's target, or the entry it normalizes to."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        normalized = self._normalize(name)
        return next((k for k in self._entries if self._normalize(k) == normalized), None)

    def lookup(self, name: str) -> T:
        """The entry registered as `name` (or an alias, or a name that normalizes to it); a clear error otherwise."""
        key = self._key(name) if isinstance(name, str) else None
        if key is None:
            message = f"Unknown {self.kind} {name!r}; choose one of {list(self)}."
            raise self.error(f"{message} {self.hint}".strip())
        return self._entries[key]

    def __getitem__(self, name: str) -> T:
        key = self._key(name) if isinstance(name, str) else None
        if key is None:
            raise KeyError(name)
        return self._entries[key]

    def __iter__(self) -> Iterator[str]:
        """Registered names (aliases excluded), in registration order."""
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self)})"
