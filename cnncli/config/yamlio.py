"""Safe YAML reading that remembers the line of every key.

PyYAML's safe composer builds the node tree (which knows line numbers); we
construct the Python values from it ourselves so that each key path maps to
its line, duplicate keys are caught, and alias expansion is bounded (a
"billion laughs" file fails fast instead of filling memory).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from cnncli.errors import ConfigError, Problem

MAX_FILE_BYTES = 1_000_000  # a real config is a few kB; refuse before parsing a huge file
MAX_NODES = 200_000  # bounds alias expansion ("billion laughs") and deep structures
MAX_DEPTH = 64

KeyPath = tuple  # ("model", "layers", 2, "kernel_size")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot, so `learning_rate: 1e-3`
    would reach Keras as the string "1e-3"; YAML 1.2 (and every Keras example) reads a number.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def format_path(path: KeyPath) -> str:
    """("model", "layers", 2, "kernel_size") -> "model.layers[2].kernel_size"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Builder:
    def __init__(self, loader: yaml.SafeLoader):
        self.loader = loader
        self.lines: dict[KeyPath, int] = {}
        self.problems: list[Problem] = []
        self.count = 0

    def _count(self, node: yaml.Node, path: KeyPath, depth: int) -> None:
        self.count += 1
        if self.count > MAX_NODES or depth > MAX_DEPTH:
            raise ConfigError.single(
                f"the document is too large or too deeply nested (over {MAX_NODES:,} values "
                f"or {MAX_DEPTH} levels, counting aliases); a config is a few dozen keys",
                format_path(path[:2]),
                node.start_mark.line + 1,
            )  # deeper steps are alias noise

    def build(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
        self._count(node, path, depth)
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.CollectionNode) and node.tag != _PLAIN_TAGS[type(node)]:
            raise _tag_error(node, path)  # e.g. !!python/object on a mapping: not constructed, refused
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            merged: set = set()  # keys a `<<` brought in: the mapping's own keys override them
            own, inherited = self._pairs(node, path, depth)
            for key_node, value_node, from_merge in inherited + own:
                key = self._scalar(key_node, path)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    self.problems.append(
                        Problem("keys must be plain names", format_path(path), key_node.start_mark.line + 1)
                    )
                    continue
                if key in out and (from_merge or key not in merged):
                    if from_merge:
                        continue  # YAML merge: the first mapping listed in `<<` wins
                    self.problems.append(
                        Problem(f"key `{key}` appears twice", format_path(path + (key,)), key_node.start_mark.line + 1)
                    )
                if from_merge:
                    merged.add(key)
                else:
                    merged.discard(key)
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _pairs(self, node: yaml.MappingNode, path: KeyPath, depth: int) -> tuple[list, list]:
        """(own pairs, pairs brought in by `<<` merge keys), each as (key node, value node, from a merge).

        PyYAML's flatten_mapping copies merged pairs eagerly, so nested merges grow as
        10^depth before anything is counted (a "billion laughs" through `<<`); here
        every pair is counted as it is produced.
        """
        own, inherited = [], []
        for key_node, value_node in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                own.append((key_node, value_node, False))
                continue
            sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
            for source in sources:
                if not isinstance(source, yaml.MappingNode):
                    raise ConfigError.single(
                        "`<<` merges mappings (or a list of mappings) only",
                        format_path(path),
                        key_node.start_mark.line + 1,
                    )
                self._count(source, path, depth + 1)
                source_own, source_inherited = self._pairs(source, path, depth + 1)
                for key, value, _ in source_inherited + source_own:
                    self._count(key, path, depth + 1)
                    inherited.append((key, value, True))
        return own, inherited

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError.single(
                "keys must be plain names, not lists or mappings", format_path(path), node.start_mark.line + 1
            )
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise _tag_error(node, path) from exc
        except (ValueError, OverflowError) as exc:  # int("1" * 5000), a 13th month in a timestamp
            raise ConfigError.single(
                f"cannot read the value `{_clip(node.value)}`: {_clip(str(exc), 80)}",
                format_path(path),
                node.start_mark.line + 1,
            ) from None


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


# Mappings and lists are built here, not by PyYAML, so their tags must be checked here:
# `!!python/object:x {}` would otherwise be read silently as a plain mapping.
_PLAIN_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}


def _tag_error(node: yaml.Node, path: KeyPath) -> ConfigError:
    return ConfigError.single(
        f"tag `{node.tag.replace('tag:yaml.org,2002:', '!!')}` is not allowed; configs hold plain values only "
        "(nothing is constructed or executed from YAML)",
        format_path(path),
        node.start_mark.line + 1,
    )


_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\n]|\'\')*\'|(?:^|(?<=\s))#[^\n]*', re.MULTILINE)


def _flow_depth(text: str) -> int:
    """How deeply `[` and `{` nest outside quotes and comments (at least PyYAML's flow nesting).

    PyYAML's scanner revisits every open flow level at each token, so 50,000
    nested `[` take it minutes; this linear count refuses them first.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # nearly every config: nothing to count
        return 0
    depth = deepest = 0
    for char in _QUOTED_OR_COMMENT.sub("", text):
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def parse_yaml(text: str, file: str | None = None) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML document; return the data and a key-path → line map."""
    if _flow_depth(text) > MAX_DEPTH:
        raise ConfigError.single(
            f"the document is nested too deeply (more than {MAX_DEPTH} levels); a config is a few levels deep",
            file=file,
        )
    try:
        loader = _Loader(text)  # the reader rejects control characters here, before parsing
    except yaml.YAMLError as exc:
        raise ConfigError.single(f"invalid YAML: {exc}".replace("\n", " "), file=file) from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}
        builder = _Builder(loader)
        data = builder.build(node, ())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(x for x in (exc.context, exc.problem) if x)
        raise ConfigError.single(f"invalid YAML: {what}", line=line, file=file) from None
    except yaml.YAMLError as exc:
        raise ConfigError.single(f"invalid YAML: {exc}", file=file) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError.single(
            f"the document is nested too deeply (more than {MAX_DEPTH} levels); a config is a few levels deep",
            file=file,
        ) from None
    except ConfigError as exc:
        exc.file = file
        raise
    finally:
        loader.dispose()
    if builder.problems:
        raise ConfigError(builder.problems, file)
    return data, builder.lines


def read_yaml_file(path: str | Path) -> tuple[Any, dict[KeyPath, int], str]:
    """Read and parse a config file; every failure is a ConfigError naming the file."""
    path = Path(path)
    shown = str(path)
    if not path.exists():
        raise ConfigError.single("no such file", file=shown)
    if path.is_dir():
        raise ConfigError.single("is a directory, expected a YAML file", file=shown)
    if not path.is_file():  # a FIFO would block the read forever, /dev/zero would never end
        raise ConfigError.single("is not a regular file (a device, pipe or socket); expected a YAML file", file=shown)
    too_big = f"configs are limited to {MAX_FILE_BYTES:,} bytes"
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError.single(f"file is {size:,} bytes; {too_big}", file=shown)
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # bounded even if the file grows, or lies about its size (/proc)
    except OSError as exc:
        raise ConfigError.single(f"cannot read: {exc.strerror}", file=shown) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError.single(f"file is over {MAX_FILE_BYTES:,} bytes; {too_big}", file=shown)
    if b"\x00" in raw:
        raise ConfigError.single("is a binary file, not YAML text", file=shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError.single(f"is not UTF-8 text (byte {exc.start})", file=shown) from None
    data, lines = parse_yaml(text, shown)
    return data, lines, shown
