"""Key paths of a config (`model.layers[2].kernel_size`): parsed, written back, found in the file, and
the leaves where two configs differ (cnn compare; a resume against the config of its checkpoint)."""

from __future__ import annotations

from typing import Any

from cnncli.config.yamlio import KeyPath, format_path


def nearest_line(lines: dict, path: KeyPath) -> int | None:
    """The line of `path`, or of the nearest key above it that the file has; None when not even its
    first key is there (a missing section has no line, and the root's would name the file's first key)."""
    path = tuple(path)
    if not path:
        return lines.get(())
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None


def parse_path(text: str, strict: bool = False) -> KeyPath:
    """ "model.layers[2].kernel_size" -> ("model", "layers", 2, "kernel_size").

    `strict` (for --set) refuses a `[...]` that is not an index and an empty part (`model..x`);
    otherwise, as for the paths of problems, it stays part of the key (a config may hold any key,
    `[` included).
    """
    out: list[Any] = []
    for part in text.split("."):
        if strict and not part:
            raise ValueError(f"the key path `{text}` has an empty part (two dots in a row, or a dot at an end)")
        while "[" in part:
            head, _, rest = part.partition("[")
            index, _, tail = rest.partition("]")
            if not index.strip().lstrip("-").isdigit():
                if strict:
                    raise ValueError(f"`[{index}]` is not a list index")
                break
            if head:
                out.append(head)
            out.append(int(index))
            part = tail
        if part:
            out.append(part)
    return tuple(out)


def canonical_path(text: str) -> str:
    """A --set or search path as problems name it: `model.layers[0].filters`."""
    return format_path(parse_path(text, strict=True))


def flatten(data: Any, prefix: tuple = ()) -> dict[str, object]:
    """{"model.layers[0].filters": 8, ...}: every leaf of a config under its --set path."""
    if isinstance(data, dict) and data:
        return {k: v for key, value in data.items() for k, v in flatten(value, prefix + (key,)).items()}
    if isinstance(data, list) and data and any(isinstance(v, (dict, list)) for v in data):
        return {k: v for i, value in enumerate(data) for k, v in flatten(value, prefix + (i,)).items()}
    return {format_path(prefix): data}


MISSING = "(absent)"


def differences(configs: list[dict]) -> dict[str, list]:
    """The config keys whose values are not the same in every run, with each run's value."""
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    out = {}
    for key in keys:
        values = [f.get(key, MISSING) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out
