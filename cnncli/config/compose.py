"""Composition of config files: `extends:` chains and several files merged left to right.

`extends: base.yaml` (or a list of files) names files this one builds on,
relative to this file's folder. Mappings merge key by key, deeper and deeper;
anything else (a list, a number, null) in the later file replaces the earlier
value whole, so `model.layers` is never spliced. Every line of the result is
an `errors.Line` that remembers its file, so an error in a value set by a base
file points at that file and line.

Paths a config names (`data.path`, `model.backbone.weights`,
`model.backbone.from_run`) are read relative to the folder of the file that
sets them and written back absolute, so the resolved config (what a run
directory stores) means the same from anywhere.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnncli.config.yamlio import KeyPath, read_yaml_file
from cnncli.errors import ConfigError, Line

EXTENDS = "extends"
MAX_CHAIN = 32  # files in one extends chain; a longer one is a mistake, not a design
# Keys holding a file or folder path, and the values that are names rather than paths.
PATH_KEYS: dict[KeyPath, tuple] = {
    ("data", "path"): (),
    ("model", "backbone", "weights"): ("imagenet",),
    ("model", "backbone", "from_run"): (),
}


def read_config_files(paths: str | Path | Sequence[str | Path]) -> tuple[Any, dict[KeyPath, int], str]:
    """Read one config, or several merged left to right; return (data, key path → Line, shown name).

    The shown name is the last file's: it is the most specific one, and names the run.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    data: Any = None
    lines: dict[KeyPath, int] = {}
    shown = ""
    for path in paths:
        layer, layer_lines, shown = _read_chain(Path(path), [])
        if data is None or layer is None:  # an empty file adds nothing to the others
            data, lines = (layer, layer_lines) if data is None else (data, lines)
        else:
            data, lines = merge(data, lines, layer, layer_lines)
    return data, lines, shown


def _read_chain(path: Path, chain: list[str]) -> tuple[Any, dict[KeyPath, int], str]:
    data, raw_lines, shown = read_yaml_file(path)
    lines: dict[KeyPath, int] = {k: Line(v, shown) for k, v in raw_lines.items()}
    if not isinstance(data, dict):
        return data, lines, shown
    _resolve_paths(data, lines, path.parent)
    bases = data.pop(EXTENDS, None)
    extends_line = lines.pop((EXTENDS,), None)
    for key in [k for k in lines if k[:1] == (EXTENDS,)]:
        del lines[key]
    if bases is None:
        return data, lines, shown
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError.single("`extends` takes a file name or a list of file names", EXTENDS, extends_line, shown)
    here = os.path.realpath(path)
    chain = chain + [here]
    merged: Any = None
    merged_lines: dict[KeyPath, int] = {}
    for base in bases:
        base_path = Path(os.path.normpath(path.parent / base))
        if os.path.realpath(base_path) in chain:
            names = [_short(p) for p in chain[chain.index(os.path.realpath(base_path)) :]]
            raise ConfigError.single(
                f"`extends` makes a cycle: {' → '.join(names + [_short(base_path)])}", EXTENDS, extends_line, shown
            )
        if len(chain) >= MAX_CHAIN:
            raise ConfigError.single(f"`extends` chain is longer than {MAX_CHAIN} files", EXTENDS, extends_line, shown)
        if not base_path.exists():  # anything else that is not a readable file is refused by read_yaml_file
            raise ConfigError.single(f"`extends`: no such file {base_path}", EXTENDS, extends_line, shown)
        base_data, base_lines, base_shown = _read_chain(base_path, chain)
        if not isinstance(base_data, dict):
            raise ConfigError.single(
                f"`extends`: {base_shown} is not a mapping of config keys", EXTENDS, extends_line, shown
            )
        merged, merged_lines = (
            merge(merged, merged_lines, base_data, base_lines) if merged is not None else (base_data, base_lines)
        )
    return (*merge(merged, merged_lines, data, lines), shown)


def _short(path: str | Path) -> str:
    """A path as a user would type it: relative to the working folder when it is below it."""
    text = os.path.relpath(path)
    return str(path) if text.startswith("..") else text


def merge(base: Any, base_lines: dict, over: Any, over_lines: dict, path: KeyPath = ()) -> tuple[Any, dict]:
    """`over` on top of `base`: mappings merge recursively, anything else replaces; lines follow the values."""
    lines = dict(base_lines) if path == () else base_lines
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if key in base:
                out[key], _ = merge(base[key], lines, value, over_lines, path + (key,))
            else:
                out[key] = value
                _take_lines(lines, over_lines, path + (key,))
        if path in over_lines:
            lines[path] = over_lines[path]
        return out, lines
    _take_lines(lines, over_lines, path)
    return over, lines


def _take_lines(lines: dict, over_lines: dict, path: KeyPath) -> None:
    """The lines under `path` now come from the later file: drop the earlier ones, copy the later."""
    n = len(path)
    for key in [k for k in lines if k[:n] == path]:
        del lines[key]
    lines.update({k: v for k, v in over_lines.items() if k[:n] == path})


def _resolve_paths(data: dict, lines: dict, folder: Path) -> None:
    """Make the path values this file sets absolute, reading them from `folder`."""
    for key_path, names in PATH_KEYS.items():
        node: Any = data
        for step in key_path[:-1]:
            node = node.get(step) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(key_path[-1])
        if (
            isinstance(value, str)
            and value
            and value not in names
            and not value.startswith("~")
            and not os.path.isabs(value)
        ):
            node[key_path[-1]] = os.path.abspath(os.path.join(folder, value))
