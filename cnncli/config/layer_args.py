"""What a layer argument may look like in YAML beyond the class's signature.

- Names Keras still accepts through `**kwargs` (`LeakyReLU(alpha=...)`, renamed
  `negative_slope` in Keras 3 but still read): the signature alone would refuse them.
- Regularizers written as `{l2: 1e-4}`, `{l1: 1e-5, l2: 1e-4}` or `{type: L2, l2: 1e-4}`:
  Keras's own string form (`"l2"`) cannot carry a factor, and its serialized
  form (`{class_name: L2, config: {l2: 1e-4}}`) is noise in a config.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import warnings
from collections.abc import Iterator
from typing import Any

from cnncli.errors import Problem, did_you_mean

# `kwargs.pop("alpha", ...)`, `if "alpha" in kwargs`, `kwargs.get("alpha")` in a constructor's source.
_KWARGS_READ = re.compile(
    r"""kwargs\.pop\(\s*["'](\w+)["']|["'](\w+)["']\s+in\s+kwargs|"""
    r"""kwargs\.get\(\s*["'](\w+)["']"""
)
_REGULARIZERS = {
    "l1": "L1",
    "l2": "L2",
    "l1l2": "L1L2",
    "l1_l2": "L1L2",
    "orthogonal": "OrthogonalRegularizer",
    "orthogonalregularizer": "OrthogonalRegularizer",
}
_REGULARIZER_ARGS = {"L1": ("l1",), "L2": ("l2",), "L1L2": ("l1", "l2"), "OrthogonalRegularizer": ("factor", "mode")}


@functools.cache
def kwargs_names(cls: type) -> tuple[str, ...]:
    """Argument names a class's own constructor reads from **kwargs (not its base classes')."""
    init = cls.__dict__.get("__init__")
    if init is None:
        return ()
    try:
        source = inspect.getsource(init)
    except (OSError, TypeError):  # no source shipped: only the signature counts
        return ()
    return tuple(sorted({a or b or c for a, b, c in _KWARGS_READ.findall(source)}))


@contextlib.contextmanager
def quiet_legacy_names(cls: type, args: dict[str, Any]) -> Iterator[None]:
    """Keras warns that `alpha` is deprecated; a config that says `alpha` is valid, so no warning."""
    with warnings.catch_warnings():
        if any(key in kwargs_names(cls) for key in args):
            warnings.simplefilter("ignore", UserWarning)
        yield


def is_regularizer_arg(key: str) -> bool:
    """Whether a layer argument named `key` takes a regularizer."""
    return key.endswith("_regularizer")


def regularizer_problems(value: Any, path: str) -> list[Problem]:
    """Problems with a `{l2: 1e-4}` / `{type: L2, l2: 1e-4}` value; Keras's own forms pass through."""
    if not isinstance(value, dict) or "class_name" in value:
        return []
    kind = _regularizer_kind(value)
    if kind is None:
        shown = value.get("type", ", ".join(map(str, value)))
        return [
            Problem(
                f"unknown regularizer `{shown}`{did_you_mean(str(shown), _REGULARIZER_ARGS)}; write "
                "{l2: 1e-4}, {l1: 1e-5}, {l1: 1e-5, l2: 1e-4} or {type: L2, l2: 1e-4}",
                path,
            )
        ]
    valid = _REGULARIZER_ARGS[kind]
    return [
        Problem(
            f"{kind} regularizer takes no argument `{key}`{did_you_mean(str(key), valid)}; "
            f"it takes: {', '.join(valid)}",
            f"{path}.{key}",
        )
        for key in value
        if key != "type" and key not in valid
    ]


def _regularizer_kind(value: dict) -> str | None:
    if "type" in value:
        return _REGULARIZERS.get(str(value["type"]).lower())
    keys = {str(k).lower() for k in value}
    if keys == {"l1", "l2"}:
        return "L1L2"
    return _REGULARIZERS.get(keys.pop()) if len(keys) == 1 else None


def keras_arguments(args: dict[str, Any]) -> dict[str, Any]:
    """Layer arguments with the config's shorthands turned into Keras objects (checked before)."""
    out = dict(args)
    for key, value in args.items():
        if is_regularizer_arg(key) and isinstance(value, dict) and "class_name" not in value:
            import keras

            kind = _regularizer_kind(value)
            assert kind is not None  # regularizer_problems refused the config before
            out[key] = getattr(keras.regularizers, kind)(**{k: v for k, v in value.items() if k != "type"})
    return out
