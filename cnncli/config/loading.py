"""Reading a config: YAML with its lines, --set overrides, the schema of cnncli/config.py, the checks across
fields and the search paths, every problem at once with its file and line."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from cnncli.config.keypaths import nearest_line, parse_path
from cnncli.config.schema import FILE_DATASETS, Config
from cnncli.config.yamlio import KeyPath, format_path, parse_yaml
from cnncli.errors import ConfigError, Line, Problem, UsageError, describe, did_you_mean

# ---------------------------------------------------------------- cross-field checks


def _check_path_needed(cfg: Config) -> list[Problem]:
    if cfg.data.dataset in FILE_DATASETS and not cfg.data.path:
        return [Problem(f"dataset `{cfg.data.dataset}` needs `data.path`", "data.path")]
    return []


def _check_layers_present(cfg: Config) -> list[Problem]:
    if not cfg.model.layers and not (cfg.model.backbone and cfg.model.backbone.include_top):
        return [Problem("the model has no layers; add at least an output layer", "model.layers")]
    return []


def _check_graph_names(cfg: Config) -> list[Problem]:
    problems, seen = [], {"input"}
    for i, layer in enumerate(cfg.model.layers):
        for ref in layer.inputs or []:
            if ref not in seen:
                hint = did_you_mean(ref, seen)
                problems.append(
                    Problem(f"input `{ref}` is not a layer named earlier{hint}", f"model.layers[{i}].inputs")
                )
        if layer.name:
            if layer.name in seen:
                problems.append(Problem(f"layer name `{layer.name}` is used twice", f"model.layers[{i}].name"))
            seen.add(layer.name)
    return problems


def _check_phases(cfg: Config) -> list[Problem]:
    if not cfg.train.phases:
        return []
    problems = []
    if cfg.model.backbone is None:
        problems.append(Problem("phases freeze and unfreeze a backbone; set `model.backbone`", "train.phases"))
    if "epochs" in cfg.train.model_fields_set:
        problems.append(
            Problem("with `train.phases`, epochs are given per phase; remove `train.epochs`", "train.epochs")
        )
    for i, phase in enumerate(cfg.train.phases):
        if isinstance(phase.trainable, list) and not phase.trainable:
            problems.append(
                Problem(
                    "an empty list trains nothing but the head; write `trainable: head`", f"train.phases[{i}].trainable"
                )
            )
        if phase.layer_lr_decay is not None and phase.trainable == "head":
            problems.append(
                Problem(
                    "layer_lr_decay scales the rates of backbone blocks, but this phase trains "
                    "only the head; unfreeze blocks (`trainable: [block5]` or `all`) or remove it",
                    f"train.phases[{i}].layer_lr_decay",
                )
            )
    return problems


def _check_validation_monitors(cfg: Config) -> list[Problem]:
    if cfg.data.validation_split > 0:
        return []
    problems = []
    if cfg.train.early_stopping and cfg.train.early_stopping.monitor.startswith("val_"):
        problems.append(
            Problem(
                f"monitors `{cfg.train.early_stopping.monitor}` but data.validation_split is 0",
                "train.early_stopping.monitor",
            )
        )
    if cfg.train.checkpoint.save_best_only and cfg.train.checkpoint.monitor.startswith("val_"):
        problems.append(
            Problem(
                f"monitors `{cfg.train.checkpoint.monitor}` but data.validation_split is 0", "train.checkpoint.monitor"
            )
        )
    return problems


CROSS_CHECKS = (
    _check_path_needed,
    _check_layers_present,
    _check_graph_names,
    _check_phases,
    _check_validation_monitors,
)


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    """The schema class that owns the mapping at `loc`, for key suggestions."""
    cls: Any = Config
    for step in loc:
        if isinstance(step, int):
            continue
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or step not in cls.model_fields:
            return None
        cls = _unwrap(cls.model_fields[step].annotation)
    return cls if isinstance(cls, type) and issubclass(cls, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    """Optional[list[X]] -> X, when X is a schema class."""
    for arg in typing.get_args(annotation) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def _pydantic_step(part: Any) -> bool:
    """False for pydantic's own location markers (`list[int]`, `function-after[...]`), not keys of the file."""
    # markers are a bare word with brackets (`tuple[float, float]`); a dotted key (`model.layers[0].filters`,
    # a search path) is the user's
    return not (isinstance(part, str) and (re.fullmatch(r"[\w-]+\[.*\]", part) or part.startswith("function-")))


def _problem_from_pydantic(err: ErrorDetails) -> Problem:
    kind = err["type"]
    raw = tuple(err["loc"])
    if kind == "extra_forbidden" and raw:  # the last step is the user's unknown key, whatever it looks like
        loc = tuple(p for p in raw[:-1] if _pydantic_step(p)) + raw[-1:]
    else:
        loc = tuple(p for p in raw if _pydantic_step(p))
    if kind == "extra_forbidden":
        owner = _model_at(loc[:-1])
        valid = [n for n in owner.model_fields] if owner else []
        message = f"unknown key `{loc[-1]}`{did_you_mean(str(loc[-1]), valid)}"
        if valid:
            message += f"; valid keys here: {', '.join(valid)}"
    elif kind == "missing":
        message = "is required"
    elif kind == "value_error":
        message = str(err.get("ctx", {}).get("error", err["msg"]))
    else:
        message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {describe(err.get('input'))}"
    return Problem(message, format_path(loc), None)


def validate_data(
    data: Any,
    lines: dict | None = None,
    file: str | None = None,
    default_name: str | None = None,
    spec_check: Callable[[Any], list[Problem]] | None = None,
) -> Config:
    """Turn parsed YAML into a Config, or raise a ConfigError listing every problem.

    `spec_check` (e.g. `cnncli.model.raw_checks.raw_spec_problems`) adds layer-type and
    argument problems, which need Keras, to a failing report; this module does not import Keras.
    """
    lines = lines or {}
    if data is None:
        raise ConfigError.single("the file is empty; a config needs at least `model.layers`", file=file)
    if not isinstance(data, dict):
        raise ConfigError.single(
            f"the top level must be a mapping of keys, got a {type(data).__name__}", line=lines.get(()), file=file
        )
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem_from_pydantic(e) for e in exc.errors()]
        for p, e in zip(problems, exc.errors(), strict=True):
            p.line = nearest_line(lines, tuple(x for x in e["loc"] if isinstance(x, (str, int))))
        raise ConfigError(_with_spec_problems(problems, data, lines, spec_check), file) from None
    problems = [p for check in CROSS_CHECKS for p in check(cfg)]
    for p in problems:
        p.line = nearest_line(lines, parse_path(p.path))
    problems += _search_problems(cfg, lines)
    if problems:
        raise ConfigError(_with_spec_problems(problems, data, lines, spec_check), file)
    if cfg.name is None and default_name:
        cfg.name = default_name
    cfg._file, cfg._lines = file, lines
    return cfg


def _search_problems(cfg: Config, lines: dict) -> list[Problem]:
    """Each `search.params` key must name a value of this config, as a --set path would."""
    if cfg.search is None:
        return []
    problems = []
    for key in cfg.search.params:
        where = ("search", "params", key)
        try:
            path = parse_path(key, strict=True)
            message = _schema_step_problem(cfg, path) if path else "is empty"
        except ValueError as exc:
            message = str(exc)
        if message:
            problems.append(Problem(message, format_path(where[:2]) + f".{key}", nearest_line(lines, where)))
    if cfg.search.sampler == "grid":
        for key, dist in cfg.search.params.items():
            if dist.choice is None and dist.int_ is None:
                problems.append(
                    Problem(
                        "the grid sampler needs `choice` or `int` values",
                        f"search.params.{key}",
                        nearest_line(lines, ("search", "params", key)),
                    )
                )
    return problems


def _schema_step_problem(cfg: Config, path: KeyPath) -> str | None:
    """Why `path` names no value of `cfg` (unknown key, missing list item), or None when it does.

    Below a `type`-chosen Keras class (a layer, the optimizer) any argument is accepted here;
    the builder checks it against the class when each trial is built.
    """
    node: Any = cfg
    for i, step in enumerate(path):
        here = format_path(path[:i])
        if isinstance(node, list):
            if not isinstance(step, int):
                return f"`{here}` is a list; index it, e.g. `{here}[0]`"
            if not -len(node) <= step < len(node):
                return f"`{here}` has {len(node)} item(s); there is no [{step}]"
            node = node[step]
            continue
        if isinstance(step, int):
            return f"`{here}` is not a list"
        owner = type(node) if isinstance(node, BaseModel) else (_model_at(path[:i]) if node is None else None)
        if owner is None:
            if isinstance(node, dict):
                node = node.get(step)
                continue
            return f"`{here}` is a single value, not a mapping"
        if step in ("search", "tracking") and i == 0:
            return f"`{step}` is not searchable"
        if step not in owner.model_fields:
            if owner.model_config.get("extra") == "allow":
                return None
            valid = list(owner.model_fields)
            return f"unknown key `{step}`{did_you_mean(step, valid)}; valid keys here: {', '.join(valid)}"
        node = getattr(node, step) if node is not None else None
    return None


def _with_spec_problems(
    problems: list[Problem], data: Any, lines: dict, spec_check: Callable[[Any], list[Problem]] | None
) -> list[Problem]:
    """`problems` plus those `spec_check` finds in the raw data, ordered by line."""
    extra = spec_check(data) if spec_check else []
    for p in extra:
        p.line = nearest_line(lines, parse_path(p.path))
    return sorted(problems + extra, key=lambda p: p.line or 0)


class Override(str):
    """A `key.path=value` override that knows how the user gave it: `--set a=b` unless told otherwise
    (`--data a=b`, `--epochs 3`, a sampled search value). Problems with its value name that, not the file."""

    given: str
    option: str

    def __new__(cls, text: str, given: str | None = None, option: str = "--set") -> Override:
        """An override's text, with the option and words it was typed as."""
        self = super().__new__(cls, text)
        self.option, self.given = option, given or f"{option} {text}"
        return self


def _parse_override(item: str, option: str = "--set") -> tuple[Override, KeyPath, str]:
    """(the override, its key path, its value's text), or a UsageError saying how it is malformed."""
    item = item if isinstance(item, Override) else Override(item, option=option)
    key, sep, raw = item.partition("=")
    try:
        if not sep:
            raise ValueError("expected KEY.PATH=VALUE, e.g. train.epochs=3")
        if not key.strip():
            raise ValueError("the key path is empty; expected KEY.PATH=VALUE, e.g. train.epochs=3")
        return item, parse_path(key.strip(), strict=True), raw
    except ValueError as exc:
        raise UsageError(f"`{item}`: {exc}", item.option) from None


def check_overrides(overrides: list[str]) -> None:
    """A UsageError for the first malformed override, before a command opens anything."""
    for item in overrides:
        _parse_override(item)


def apply_overrides(data: dict, overrides: list[str], lines: dict, option: str = "--set") -> None:
    """Apply `key.path=value` overrides in place; values are YAML scalars. `option` is the command-line
    option that gave them (cnn evaluate's are `--data`), unless an override is an `Override` that says.

    A malformed override is a UsageError (exit 2); one that does not fit the config is a ConfigError.
    Each value's line is a `Line(0)` that names the override, so problems with it point at the
    command line, not at the file.
    """
    for item in overrides:
        item, path, raw = _parse_override(item, option)
        here = Line(0, given=item.given)  # line 0: from the command line

        def misfit(message: str, here=here) -> ConfigError:
            return ConfigError.single(message, line=here)

        try:
            value, _ = parse_yaml(raw)
        except ConfigError as exc:  # the value as a config file's would be refused (bad YAML, a python tag)
            raise misfit(str(exc)) from None

        node = data
        for i, step in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(step, int):
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    raise misfit(f"no list item {format_path(path[: i + 1])}")
                node = node[step]
                continue
            if not isinstance(node, dict):
                raise misfit(f"{format_path(path[:i])} is not a mapping")
            if node.get(step) is None:
                node[step] = [] if isinstance(nxt, int) else {}
                lines[path[: i + 1]] = here  # created by the override: errors below it point at it, not line 1
            node = node[step]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise misfit(f"no list item {format_path(path)}")
        elif not isinstance(node, dict):
            raise misfit(f"{format_path(path[:-1])} is not a mapping")
        node[last] = value
        lines[path] = here


def load_config(
    path: str | Path | list,
    overrides: list[str] | None = None,
    spec_check: Callable[[Any], list[Problem]] | None = None,
    option: str = "--set",
) -> Config:
    """Read, override and validate a config file, or several merged left to right (`spec_check`: see
    `validate_data`). `extends` chains are followed and `model.blocks` expanded before the schema sees
    the tree (cnncli/compose.py, cnncli/blocks.py)."""
    from cnncli.config import blocks, compose

    data, lines, shown = compose.read_config_files(path)
    if overrides:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError.single("the top level must be a mapping of keys", file=shown)
        apply_overrides(data, overrides, lines, option)
    groups = blocks.expand_blocks(data, lines)
    cfg = validate_data(data, lines, shown, default_name=Path(shown).stem, spec_check=spec_check)
    cfg._groups = groups
    return cfg


def config_from_dict(data: dict, name: str = "config") -> Config:
    """Validate an in-memory config (tests, resumed runs)."""
    return validate_data(data, {}, None, default_name=name)
