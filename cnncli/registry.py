"""One lookup table type for every name a user can write.

Layer types, datasets, backbones, optimizers, schedules and export formats are
all found through a `Registry`, so an unknown name always lists the valid ones
and suggests the nearest.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from cnncli.errors import CnnError, UsageError, did_you_mean

T = TypeVar("T")


def normalize(name: str) -> str:
    """`MaxPooling2D`, `max_pooling2d` and `maxpooling2d` all become one key."""
    return re.sub(r"[_\-\s]", "", str(name)).lower()


class UnknownName(CnnError):
    """A name that is not in a registry; the message lists what is."""


class Registry(Generic[T]):
    """Names (as their owners spell them) mapped to objects, looked up loosely."""

    def __init__(
        self, kind: str, entries: dict[str, T] | None = None, loader: Callable[[], dict[str, T]] | None = None
    ):
        self.kind = kind  # "layer type", "dataset", ... used in messages
        self._entries: dict[str, T] | None = dict(entries) if entries is not None else None
        self._loader = loader  # lets a registry of Keras classes import Keras lazily

    def _table(self) -> dict[str, T]:
        if self._entries is None:
            self._entries = dict(self._loader()) if self._loader else {}
        return self._entries

    def names(self) -> list[str]:
        """Every name in the table, sorted case-insensitively."""
        return sorted(self._table(), key=str.lower)

    def canonical(self, name: str) -> str | None:
        """The table's spelling of `name` (matched ignoring case, underscores, hyphens and spaces), or None."""
        key = normalize(name)
        for real in self._table():
            if normalize(real) == key:
                return real
        return None

    def __contains__(self, name: str) -> bool:
        return self.canonical(name) is not None

    def get(self, name: str, option: str | None = None) -> T:
        """The entry for `name`; an unknown one is a config's mistake, or with `option` (the command-line
        option the name came from, e.g. `--format`) a usage error."""
        real = self.canonical(name)
        if real is None:
            if option:
                raise UsageError(self.unknown_message(name), option)
            raise UnknownName(self.unknown_message(name))
        return self._table()[real]

    def unknown_message(self, name: str, show: int = 12) -> str:
        """`unknown <kind> name`, the closest match and the first `show` valid names."""
        names = self.names()
        hint = did_you_mean(name, names)
        listed = ", ".join(names[:show]) + (f", … ({len(names)} in all)" if len(names) > show else "")
        return f"unknown {self.kind} `{name}`{hint}; valid: {listed}"

    def register(self, name: str, value: T) -> T:
        """Add `value` under `name` and return it."""
        self._table()[name] = value
        return value

    def items(self) -> Iterable[tuple[str, T]]:
        """(name, entry) pairs, sorted by name."""
        return sorted(self._table().items(), key=lambda kv: kv[0].lower())
