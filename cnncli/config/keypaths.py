"""Key paths of a config (`model.layers[2].kernel_size`): parsed, written back, and found in the file."""

from __future__ import annotations

from typing import Any

from cnncli.config.yamlio import KeyPath, format_path


def nearest_line(lines: dict, path: KeyPath) -> int | None:
    """The line of `path`, or of its nearest parent that has one; None when none does."""
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


def parse_path(text: str, strict: bool = False) -> KeyPath:
    """"model.layers[2].kernel_size" -> ("model", "layers", 2, "kernel_size").

    `strict` (for --set) refuses a `[...]` that is not an index; otherwise, as for the
    paths of problems, it stays part of the key (a config may hold any key, `[` included).
    """
    out: list[Any] = []
    for part in text.split("."):
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
