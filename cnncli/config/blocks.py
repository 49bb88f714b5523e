"""`model.blocks`: named, parameterised sub-graphs, expanded into plain `model.layers`.

    model:
      blocks:
        basic:
          params: {filters: null, strides: 1}      # null: the use must give it
          layers:
            - {type: Conv2D, name: conv1, filters: ${filters}, kernel_size: 3, strides: ${strides}}
            - {type: Add, shortcut: input}          # the block's input joins the main path
      layers:
        - {type: basic, name: stage2, filters: 32, strides: [2, 1, 1], repeat: 3}

A use's `repeat` chains copies; an argument given as a list of `repeat`
values varies per copy. Expanded layers are named `<use>_<copy>_<layer>`
(`stage2_1_conv1`; `<use>_<layer>` without `repeat`), and `stage2` itself
names the last copy's output. Inside a block, `input` is the block's input
and its output is its last layer (or the one named by `output:`).

Wiring, here and in `model.layers`: a layer without `inputs:` takes the
previous main-path layer; a layer named in a later `shortcut:` (and the chain
leading to it) is a side branch, not the main path; `shortcut: X` makes a
layer take [main path, X]; a layer with `when: false` is left out and a
reference to it means its input (a projection that only some copies need).

This runs on the YAML tree before the schema: the result is the flat list
`cnncli.model.builder` has always built, and every expanded key keeps the line of
the block layer it came from plus the line of the use that expanded it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from cnncli.config.yamlio import KeyPath, format_path
from cnncli.errors import ConfigError, Line, Problem, did_you_mean

BLOCK_KEYS = ("params", "layers", "output")  # what a block definition holds
USE_KEYS = ("type", "name", "inputs", "repeat", "trainable")  # keys of a use that are not the block's params
WIRING_KEYS = ("shortcut", "when")  # ours, on any layer
MAX_NESTING = 8  # blocks using blocks; deeper is a block using itself
MAX_LAYERS = 5_000  # after expansion; ResNet-152 has about 500, so more is a runaway `repeat`
# `${filters}`, or `$filters`, which YAML's flow style (`{type: Conv2D, filters: $filters}`) reads unquoted.
_PARAM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


@dataclass(eq=False)
class _Layer:
    """One layer of the expanded model, and where it came from."""

    spec: dict
    source: KeyPath  # the item in the file
    name: str | None
    inputs: list  # of _Layer or "input"; [] before wiring
    explicit: bool = False  # the file gave `inputs:`, so it stays written out
    via: str | None = None
    group: tuple | None = None  # (top-level block use, "basic ×3"): the summary's row for it


@dataclass
class _Scope:
    """One list of layers being expanded: model.layers, or one copy of a block."""

    source: KeyPath  # ("model", "layers") or ("model", "blocks", name, "layers")
    prefix: str  # prepended to local names ("" at the top)
    params: dict
    input: Any  # a _Layer or "input"
    via: str | None = None
    group: tuple | None = None
    depth: int = 0
    names: dict = field(default_factory=dict)  # local name -> _Layer (or "input")
    unset: dict = field(default_factory=dict)  # a parameter without default the use left out -> its complaint


class _Expander:
    def __init__(self, blocks: dict, lines: dict):
        self.blocks = blocks
        self.lines = lines
        self.out: list[_Layer] = []
        self.problems: list[Problem] = []
        self.uses: dict[str, int] = {}
        self.told: set = set()  # (use path, parameter): a missing parameter is reported once, not per copy

    # ------------------------------------------------------------ helpers

    def problem(self, message: str, path: KeyPath, via: str | None = None) -> None:
        self.problems.append(Problem(message, format_path(path), self.line(path, via)))

    def line(self, path: KeyPath, via: str | None = None) -> int | None:
        probe = tuple(path)
        while probe and probe not in self.lines:
            probe = probe[:-1]
        found = self.lines.get(probe)
        if found is None or via is None:
            return found
        return Line(found, getattr(found, "file", None), via, given=getattr(found, "given", None))

    def where(self, path: KeyPath) -> str:
        line = self.line(path)
        file, given = getattr(line, "file", None), getattr(line, "given", None)
        if given:
            return f"{format_path(path)} ({given})"
        return f"{format_path(path)} at {file}:{line}" if file else f"{format_path(path)} (line {line})"

    # ------------------------------------------------------------ expansion

    def expand_list(self, items: list, scope: _Scope) -> Any:
        """Expand one list of layer items; return its output (a _Layer or "input")."""
        written = items
        items = [
            (i, _substitute(item, scope.params, self, scope.source + (i,), scope.via)) for i, item in enumerate(items)
        ]
        kept = []
        for i, item in items:
            if not isinstance(item, dict):
                self.problem("a layer is a mapping with a `type`", scope.source + (i,), scope.via)
                continue
            when = item.pop("when", True)
            # A parameter the use left out is needed only by a layer that stays (or by a `when:` itself).
            unset = self.require(scope, _param_names(written[i] if when is not False else written[i].get("when")))
            if not isinstance(when, bool) and not unset & _param_names(written[i].get("when")):
                self.problem(f"`when` must be true or false, got {when!r}", scope.source + (i, "when"), scope.via)
            kept.append((i, item, when is not False))
        side = _side_branches([(i, item) for i, item, _ in kept])
        main = scope.input
        last = scope.input
        for i, item, on in kept:
            path = scope.source + (i,)
            # A side branch continues from the layer before it (its own chain); the rest from the main path.
            refs = self.references(item, scope, path, last if i in side else main)
            if not on:  # left out, as if it passed its input through: its name now means what it would have read
                last = refs[0]
                if item.get("name"):
                    scope.names[str(item["name"])] = last
                continue
            kind = item.get("type")
            if isinstance(kind, str) and kind in self.blocks:
                result = self.use_block(item, refs, scope, path)
            else:
                result = self.plain_layer(item, refs, scope, path)
            if result is None:
                continue
            last = result
            if i not in side:
                main = result
        output = scope.params.get("__output__")
        if output is not None:
            return scope.names.get(output, last)
        return last

    def references(self, item: dict, scope: _Scope, path: KeyPath, main: Any) -> list:
        """The tensors a layer reads: its `inputs`, or [main, shortcut], or [main] (`main`: its path so far)."""
        inputs, shortcut = item.get("inputs"), item.pop("shortcut", None)
        if inputs is not None and shortcut is not None:
            self.problem("give `inputs` or `shortcut`, not both", path + ("shortcut",), scope.via)
        if shortcut is not None:
            return [main, self.lookup(shortcut, scope, path + ("shortcut",))]
        if inputs is None:
            return [main]
        if not isinstance(inputs, list) or not inputs:
            return [main]  # the schema reports the malformed value at its own line
        return [self.lookup(ref, scope, path + ("inputs", j)) for j, ref in enumerate(inputs)]

    def lookup(self, ref: Any, scope: _Scope, path: KeyPath) -> Any:
        ref = str(ref)
        if ref in scope.names:
            return scope.names[ref]
        if ref == "input":
            return scope.input
        known = ["input", *scope.names]
        self.problem(f"`{ref}` is not a layer named earlier{did_you_mean(ref, known)}", path, scope.via)
        return scope.input

    def require(self, scope: _Scope, names: set) -> set:
        """Report the parameters among `names` that the use left out; return them."""
        unset = names & set(scope.unset)
        for name in sorted(unset):
            message, path, via = scope.unset[name]
            if (path, name) not in self.told:
                self.told.add((path, name))
                self.problem(message, path, via)
        return unset

    def plain_layer(self, item: dict, refs: list, scope: _Scope, path: KeyPath) -> _Layer:
        if len(self.out) >= MAX_LAYERS:  # stop now: nested repeats multiply
            raise ConfigError(
                [
                    Problem(
                        f"the blocks expand to more than {MAX_LAYERS:,} layers; check `repeat`",
                        format_path(path),
                        self.line(path, scope.via),
                    )
                ]
            )
        spec = dict(item)
        local = spec.pop("name", None)
        explicit = "inputs" in spec
        spec.pop("inputs", None)
        if local is None and scope.prefix:
            local = self.auto_name(str(spec.get("type", "layer")), scope)
        name = f"{scope.prefix}{local}" if local is not None else None
        layer = _Layer(spec, path, name, refs, explicit, scope.via, scope.group)
        if local is not None:
            scope.names[str(local)] = layer
        self.out.append(layer)
        return layer

    def auto_name(self, kind: str, scope: _Scope) -> str:
        base = _snake(kind)
        n = 0
        while (f"{base}_{n}" if n else base) in scope.names:
            n += 1
        return f"{base}_{n}" if n else base

    def use_block(self, item: dict, refs: list, scope: _Scope, path: KeyPath) -> Any:
        block_name = item["type"]
        block = self.blocks[block_name]
        block_path = ("model", "blocks", block_name)
        if scope.depth >= MAX_NESTING:
            self.problem(
                f"block `{block_name}` is nested more than {MAX_NESTING} deep (does it use itself?)", path, scope.via
            )
            return None
        if len(refs) != 1:
            self.problem(f"block `{block_name}` takes one input, got {len(refs)}", path + ("inputs",), scope.via)
            return None
        params = block.get("params") or {}
        args = {k: v for k, v in item.items() if k not in USE_KEYS}
        for key in args:
            if key not in params:
                valid = ", ".join(params) or "none"
                self.problem(
                    f"block `{block_name}` has no parameter `{key}`{did_you_mean(key, params)}; "
                    f"its parameters: {valid}",
                    path + (key,),
                    scope.via,
                )
        # Needed only where a layer that stays uses it: the first inverted block of MobileNetV2 has no
        # expansion layer (`when: false`), so it needs no expansion factor.
        unset = {
            k: (f"block `{block_name}` needs `{k}` (its parameter has no default)", path, scope.via)
            for k, default in params.items()
            if default is None and k not in args
        }
        repeat = item.get("repeat", None)
        if repeat is not None and (not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1):
            self.problem(f"`repeat` must be a whole number ≥ 1, got {repeat!r}", path + ("repeat",), scope.via)
            return None
        copies = repeat or 1
        if copies > MAX_LAYERS:
            self.problem(
                f"`repeat` is {copies:,}; a model of more than {MAX_LAYERS:,} layers is refused",
                path + ("repeat",),
                scope.via,
            )
            return None
        for key, value in args.items():
            if (
                copies > 1
                and isinstance(value, list)
                and len(value) not in (copies,)
                and key in params
                and not isinstance(params[key], list)
            ):
                self.problem(
                    f"`{key}` lists {len(value)} values for {copies} copies; give one value, or one per copy",
                    path + (key,),
                    scope.via,
                )
        self.uses[block_name] = self.uses.get(block_name, 0) + 1
        use = str(item.get("name") or f"{block_name}{self.uses[block_name]}")
        group = scope.group or (use, f"{block_name} ×{copies}" if repeat is not None else block_name)
        current = refs[0]
        first = len(self.out)
        for copy in range(1, copies + 1):
            values = {
                k: (v[copy - 1] if copies > 1 and isinstance(v, list) and len(v) == copies else v)
                for k, v in args.items()
            }
            copy_params = {**params, **values}
            if block.get("output") is not None:
                copy_params["__output__"] = str(block["output"])
            label = f"copy {copy} of " if repeat is not None else ""
            via = f"{label}block `{block_name}` used by {self.where(path)}"
            if scope.via:
                via += f", {scope.via}"
            prefix = f"{scope.prefix}{use}_{copy}_" if repeat is not None else f"{scope.prefix}{use}_"
            inner = _Scope(
                block_path + ("layers",), prefix, copy_params, current, via, group, scope.depth + 1, unset=unset
            )
            current = self.expand_list(block["layers"], inner)
            if repeat is not None:
                scope.names[f"{use}_{copy}"] = current
        scope.names[use] = current
        if "trainable" in item:  # `trainable: false` on a use freezes every layer of it
            for layer in self.out[first:]:
                layer.spec.setdefault("trainable", item["trainable"])
        return current

    # ------------------------------------------------------------ result

    def result(self) -> list[tuple[dict, _Layer]]:
        """The flat layer list, with `inputs:` written wherever a layer does not read the one before it."""
        taken = {layer.name for layer in self.out if layer.name}
        written = []  # per layer: are its inputs written out?
        for k, layer in enumerate(self.out):
            previous = self.out[k - 1] if k else "input"
            first = layer.inputs[0] if len(layer.inputs) == 1 else None
            reads_previous = first is previous or (k == 0 and first == "input")
            written.append(layer.explicit or not reads_previous)
            for ref in layer.inputs if written[-1] else ():
                if isinstance(ref, _Layer) and ref.name is None:  # referred to: it needs a name
                    ref.name = _unique(_snake(str(ref.spec.get("type", "layer"))), taken)
        specs = []
        for layer, write_inputs in zip(self.out, written, strict=True):
            spec = {"type": layer.spec.get("type")}
            if layer.name is not None:
                spec["name"] = layer.name
            if write_inputs:
                spec["inputs"] = [ref if ref == "input" else ref.name for ref in layer.inputs]
            spec.update({key: value for key, value in layer.spec.items() if key != "type"})
            specs.append((spec, layer))
        return specs


def _unique(base: str, taken: set) -> str:
    n = 0
    while (name := f"{base}_{n}" if n else base) in taken:
        n += 1
    taken.add(name)
    return name


def _snake(name: str) -> str:
    """Keras's default layer naming (keras.src.utils.naming.to_snake_case), without importing Keras here."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _substitute(value: Any, params: dict, expander: _Expander, path: KeyPath, via: str | None) -> Any:
    """`${name}` → the parameter's value (whole string: the value itself, with its type)."""
    if isinstance(value, dict):
        return {k: _substitute(v, params, expander, path + (k,), via) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, params, expander, path + (i,), via) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value
    for name in (a or b for a, b in _PARAM.findall(value)):
        if name not in params or name == "__output__":
            known = [k for k in params if k != "__output__"]
            hint = did_you_mean(name, known)
            where = (
                f"; this block's parameters: {', '.join(known)}"
                if known
                else "; `${...}` refers to a block's `params` and is used inside `model.blocks`"
            )
            expander.problem(f"unknown parameter `${{{name}}}`{hint}{where}", path, via)
            return value
    whole = _PARAM.fullmatch(value)
    if whole:
        return params[whole.group(1) or whole.group(2)]
    return _PARAM.sub(lambda m: str(params[m.group(1) or m.group(2)]), value)


def _param_names(value: Any) -> set[str]:
    """The parameters a layer item (as written in its block) refers to, `${name}` or `$name`."""
    if isinstance(value, dict):
        return {n for v in value.values() for n in _param_names(v)}
    if isinstance(value, list):
        return {n for v in value for n in _param_names(v)}
    return {a or b for a, b in _PARAM.findall(value)} if isinstance(value, str) else set()


def _side_branches(items: list[tuple[int, dict]]) -> set[int]:
    """Indices of layers on a side branch: one named in a later `shortcut:`, and the chain feeding it."""
    index = {str(item["name"]): pos for pos, (_, item) in enumerate(items) if item.get("name") is not None}
    side: set[int] = set()
    for _, item in items:
        target = item.get("shortcut")
        pos = index.get(str(target)) if target is not None else None
        while pos is not None:
            i, member = items[pos]
            side.add(i)
            pos = pos - 1 if member.get("inputs") is None and pos > 0 else None
    return side


def _check_blocks(blocks: Any, lines: dict, problems: list[Problem]) -> dict:
    """The well-formed block definitions; a problem for each malformed one."""

    def problem(message: str, path: KeyPath) -> None:
        probe = path
        while probe and probe not in lines:
            probe = probe[:-1]
        problems.append(Problem(message, format_path(path), lines.get(probe)))

    if not isinstance(blocks, dict):
        problem("`model.blocks` maps block names to {params, layers, output}", ("model", "blocks"))
        return {}
    good = {}
    for name, block in blocks.items():
        path = ("model", "blocks", name)
        if name == "input" or not isinstance(name, str) or not name:
            problem("a block needs a name other than `input`", path)
            continue
        if not isinstance(block, dict):
            problem("a block is a mapping: {params: {...}, layers: [...]}", path)
            continue
        unknown = [k for k in block if k not in BLOCK_KEYS]
        for key in unknown:
            problem(
                f"unknown key `{key}`{did_you_mean(str(key), BLOCK_KEYS)}; valid keys here: {', '.join(BLOCK_KEYS)}",
                path + (key,),
            )
        if not isinstance(block.get("params", {}) or {}, dict):
            problem("`params` maps parameter names to defaults (null: required)", path + ("params",))
            continue
        if not isinstance(block.get("layers"), list) or not block["layers"]:
            problem("a block needs `layers`, a non-empty list", path + ("layers",))
            continue
        if unknown:
            continue
        good[name] = block
    return good


def _needs_expansion(model: dict) -> bool:
    layers = model.get("layers")
    return "blocks" in model or (
        isinstance(layers, list)
        and any(isinstance(item, dict) and any(k in item for k in WIRING_KEYS) for item in layers)
    )


def expand_blocks(data: Any, lines: dict) -> dict[str, tuple]:
    """Expand `model.blocks` uses and wiring keys in place; return {layer name: (block use, label)}.

    A config without blocks, `shortcut` or `when` is left exactly as written.
    """
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or not _needs_expansion(model) or not isinstance(model.get("layers", []), list):
        return {}
    problems: list[Problem] = []
    blocks = _check_blocks(model.get("blocks", {}) or {}, lines, problems)
    expander = _Expander(blocks, lines)
    expander.problems = problems
    expander.expand_list(model.get("layers", []), _Scope(("model", "layers"), "", {}, "input"))
    if expander.problems:
        raise ConfigError(sorted(expander.problems, key=lambda p: p.line or 0))
    result = expander.result()
    by_item: dict[KeyPath, list] = {}  # a layer item's key path -> the (rest of the path, line) under it
    for key, line in lines.items():
        n = 3 if key[:2] == ("model", "layers") else 5 if key[:2] == ("model", "blocks") else 0
        if n and len(key) >= n:
            by_item.setdefault(key[:n], []).append((key[n:], line))
    new_lines = {}
    for k, (spec, layer) in enumerate(result):
        target = ("model", "layers", k)
        moved = (format_path(target), format_path(layer.source)) if target != layer.source else None
        for rest, line in by_item.get(tuple(layer.source), []):
            new_lines[target + rest] = _relined(line, layer.via, moved)
        origin = new_lines.get(target)
        for key in ("name", "inputs"):
            if key in spec and target + (key,) not in new_lines and origin is not None:
                new_lines[target + (key,)] = origin
    for key in [k for k in lines if k[:2] in (("model", "layers"), ("model", "blocks"))]:
        del lines[key]
    lines.update(new_lines)
    model.pop("blocks", None)
    model["layers"] = [spec for spec, _ in result]
    return {layer.name: layer.group for _, layer in result if layer.group and layer.name}


def _relined(line: int, via: str | None, moved: tuple[str, str] | None) -> int:
    if via is None and moved is None:
        return line
    return Line(
        line, getattr(line, "file", None), via or getattr(line, "via", None), moved, getattr(line, "given", None)
    )
