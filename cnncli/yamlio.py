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
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


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

    def build(self, node: yaml.Node, path: KeyPath, depth: int = 0) -> Any:
        self.count += 1
        if self.count > MAX_NODES or depth > MAX_DEPTH:
            raise ConfigError.single(
                f"the document is too large or too deeply nested (over {MAX_NODES:,} values "
                f"or {MAX_DEPTH} levels, counting aliases); a config is a few dozen keys",
                format_path(path[:2]), node.start_mark.line + 1)  # deeper steps are alias noise
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.CollectionNode) and node.tag != _PLAIN_TAGS[type(node)]:
            raise _tag_error(node, path)  # e.g. !!python/object on a mapping: not constructed, refused
        if isinstance(node, yaml.MappingNode):
            self.loader.flatten_mapping(node)  # resolves YAML merge keys (<<)
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, path)
                if not isinstance(key, (str, int, float, bool)) and key is not None:
                    self.problems.append(Problem("keys must be plain names", format_path(path),
                                                 key_node.start_mark.line + 1))
                    continue
                if key in out:
                    self.problems.append(Problem(f"key `{key}` appears twice", format_path(path + (key,)),
                                                 key_node.start_mark.line + 1))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, path + (key,), depth + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node, path)

    def _scalar(self, node: yaml.Node, path: KeyPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise ConfigError.single("keys must be plain names, not lists or mappings",
                                     format_path(path), node.start_mark.line + 1)
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise _tag_error(node, path) from exc


# Mappings and lists are built here, not by PyYAML, so their tags must be checked here:
# `!!python/object:x {}` would otherwise be read silently as a plain mapping.
_PLAIN_TAGS = {yaml.MappingNode: "tag:yaml.org,2002:map", yaml.SequenceNode: "tag:yaml.org,2002:seq"}


def _tag_error(node: yaml.Node, path: KeyPath) -> ConfigError:
    return ConfigError.single(
        f"tag `{node.tag.replace('tag:yaml.org,2002:', '!!')}` is not allowed; configs hold plain values only "
        "(nothing is constructed or executed from YAML)",
        format_path(path), node.start_mark.line + 1)


def parse_yaml(text: str, file: str | None = None) -> tuple[Any, dict[KeyPath, int]]:
    """Parse one YAML document; return the data and a key-path → line map."""
    loader = _Loader(text)
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
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ConfigError.single(
                f"file is {size:,} bytes; configs are limited to {MAX_FILE_BYTES:,}", file=shown)
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError.single(f"cannot read: {exc.strerror}", file=shown) from None
    if b"\x00" in raw:
        raise ConfigError.single("is a binary file, not YAML text", file=shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError.single(f"is not UTF-8 text (byte {exc.start})", file=shown) from None
    data, lines = parse_yaml(text, shown)
    return data, lines, shown
