"""The errors a user can cause, and how they read on one line.

Everything below the CLI raises a `CnnError` subclass for mistakes in input
(configs, data, paths, command options); the CLI prints `str(error)` after
"Error: " and exits 1. A `UsageError` (a command line that no file could make
right) is shown as Typer shows its own, with the usage line, and exits 2.
Anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class CnnError(Exception):
    """A mistake in what the user gave us; its message is shown as-is."""

    exit_code = 1


@dataclass
class Problem:
    """One thing wrong in a config: where it is and what is wrong."""

    message: str
    path: str = ""  # key path such as "model.layers[2].kernel_size"
    line: int | None = None  # 1-based line in the YAML file

    def where(self, file: str | None) -> str:
        """`file:line: key.path` of the problem, as far as it is known."""
        parts = []
        file = getattr(self.line, "file", None) or file  # a value set in another file of an `extends` chain
        given = getattr(self.line, "given", None)  # a value from the command line: the option as typed
        if given:
            parts.append(given)
        elif file:
            parts.append(f"{file}:{self.line}" if self.line else file)
        if self.shown_path():
            parts.append(self.shown_path())
        return ": ".join(parts)

    def shown_path(self) -> str:
        """The key path as the file has it (a layer expanded from a block: its place in the block)."""
        moved = getattr(self.line, "moved", None)  # (expanded path, path in the file)
        if moved and (self.path == moved[0] or self.path.startswith((moved[0] + ".", moved[0] + "["))):
            return moved[1] + self.path[len(moved[0]) :]
        return self.path

    def full_message(self) -> str:
        """The message, with the block use a layer came from when it did."""
        via = getattr(self.line, "via", None)  # a layer expanded from a block: which use expanded it
        return f"{self.message} ({via})" if via else self.message

    def render(self, file: str | None) -> str:
        """The problem as one line: where, then what."""
        where = self.where(file)
        return f"{where}: {self.full_message()}" if where else self.full_message()


class Line(int):
    """A 1-based line number that also knows its file, when a config is composed of several.

    `via` says how a value got into the model when it came from a `model.blocks`
    definition (e.g. "in block `basic`, copy 2 of model.layers[3] at line 12").
    `given` is the option that set the value on the command line (`--set data.limit=abc`),
    shown instead of the file; such a line is 0.
    Being an int, it travels through every line map and comparison unchanged.
    """

    file: str | None = None
    via: str | None = None
    moved: tuple[str, str] | None = None  # errors at the first path are shown at the second
    given: str | None = None

    def __new__(
        cls,
        line: int,
        file: str | None = None,
        via: str | None = None,
        moved: tuple[str, str] | None = None,
        given: str | None = None,
    ) -> Line:
        """A line number, with the file, include and override it came from."""
        self = super().__new__(cls, line)
        self.file, self.via, self.moved, self.given = file, via, moved, given
        return self


@dataclass
class ConfigError(CnnError):
    """One or more problems in a config file, reported together."""

    problems: list[Problem] = field(default_factory=list)
    file: str | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [p.render(self.file) for p in self.problems]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems\n" + "\n".join(f"  {line}" for line in lines)

    @classmethod
    def single(cls, message: str, path: str = "", line: int | None = None, file: str | None = None) -> ConfigError:
        """A ConfigError with one problem."""
        return cls([Problem(message, path, line)], file)


class DataError(CnnError):
    """Data that is missing, unreadable or does not fit the model."""


class RunError(CnnError):
    """A run directory that is missing, incomplete or not ours."""


class UsageError(CnnError):
    """A malformed command line: an option's value that no file, config or run could make right
    (`--split bogus`, `--set a..b=1`). Exit 2, shown as Typer shows its own usage errors."""

    exit_code = 2

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option  # `--split`, named by Typer's "Invalid value for '--split'"


class Interrupted(CnnError):
    """The user stopped the job (Ctrl-C, SIGTERM); the run stays resumable."""

    exit_code = 130


def describe(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut at 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def closest(name: str, choices: Any, n: int = 1) -> list[str]:
    """The valid names nearest to a mistyped one, case-insensitively. A name of several words first looks
    for the names that hold all of them, in any order and each nearly spelled: `crossentropy_sparse`
    finds `sparse_categorical_crossentropy`, not the closer string `binary_crossentropy`."""
    typed, words, snake = str(name).lower(), _words(name), _is_snake(name)
    found = []
    # Ties go to the name written as the typed one is (snake_case or CamelCase), then, as difflib's
    # get_close_matches does, to the last in alphabetical order (DepthwiseConv2D before DepthwiseConv1D).
    for choice in sorted({str(c) for c in choices}, key=str.lower, reverse=True):
        score = difflib.SequenceMatcher(None, typed, choice.lower()).ratio()
        holds_all = len(words) > 1 and all(_has_word(_words(choice), w) for w in words)
        if holds_all:  # sparse_categorical_crossentropy and SparseCategoricalCrossentropy, say: the words decide
            score = difflib.SequenceMatcher(None, "".join(sorted(words)), "".join(sorted(_words(choice)))).ratio()
        if holds_all or score >= 0.6:  # difflib.get_close_matches's cutoff
            found.append((not holds_all, -score, _is_snake(choice) != snake, choice))
    found.sort(key=lambda row: row[:3])  # stable: equal rows keep the reverse alphabetical order
    return [choice for *_, choice in found[:n]]


def _is_snake(name) -> bool:
    return "_" in str(name) or str(name).islower()


def _words(name) -> set[str]:
    """`SparseCategoricalCrossentropy`, `sparse_categorical_crossentropy` -> {sparse, categorical, crossentropy}."""
    return {w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", str(name))}


def _has_word(words: set[str], word: str) -> bool:
    return any(difflib.SequenceMatcher(None, word, w).ratio() >= 0.8 for w in words)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean `x`?)' or '' when nothing is close."""
    hits = closest(name, choices)
    return f" (did you mean `{hits[0]}`?)" if hits else ""
