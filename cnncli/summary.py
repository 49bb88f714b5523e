"""`cnn summary` and `cnn validate`: build the model from a config and describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnncli.errors import CnnError, UsageError

if TYPE_CHECKING:
    from cnncli.model.geometry import Summary


@dataclass
class SummaryResult:
    file: str
    input_shape: tuple
    summary: Summary
    warnings: list[str] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)  # per training phase: trainable / frozen parameters
    groups: dict = field(default_factory=dict)  # layer name -> (block use, "basic ×3"), from model.blocks

    def as_json(self) -> dict:
        """What `cnn summary --json` prints."""
        data = self.summary.as_json()
        data["input_shape"] = [None, *self.input_shape]
        data["phases"] = self.phases
        data["warnings"] = self.warnings
        if self.groups:
            data["blocks"] = {name: use for name, (use, _) in self.groups.items()}
        return data

    def rows(self, expand: bool = False) -> list:
        """The summary's layer rows; unless `expand`, the layers of one block use folded into one row."""
        if expand or not self.groups:
            return list(self.summary.layers)
        from cnncli.model.geometry import LayerRow

        out: list = []
        members: dict[str, list] = {}
        for row in self.summary.layers:
            use, label = self.groups.get(row.name, (None, None))
            if use is None:
                out.append(row)
                continue
            if use not in members:
                members[use] = []
                out.append((use, label))
            members[use].append(row)
        folded = []
        for item in out:
            if not isinstance(item, tuple):
                folded.append(item)
                continue
            rows = members[item[0]]
            folded.append(
                LayerRow(
                    item[0],
                    item[1],
                    rows[-1].output_shape,
                    sum(r.params for r in rows),
                    sum(r.trainable_params for r in rows),
                    rows[-1].receptive_field,
                    sum(r.macs for r in rows),
                )
            )
        return folded


@dataclass
class ValidateResult:
    file: str
    ok: bool
    error: str = ""
    problems: list = field(default_factory=list)  # (file, line or None, message): one per problem, for CI annotations
    total_params: int = 0
    input_shape: tuple = ()
    warnings: list[str] = field(default_factory=list)
    config_yaml: str = ""

    def as_json(self) -> dict:
        """What `cnn validate --json` prints for one file."""
        return {
            "file": self.file,
            "ok": self.ok,
            "error": self.error or None,
            "problems": [{"file": f, "line": line, "message": m} for f, line, m in self.problems],
            "total_params": self.total_params,
            "input_shape": list(self.input_shape),
            "warnings": self.warnings,
        }


def summarize_config(path: str | Path | list, overrides: list[str], classifier: bool = False) -> SummaryResult:
    """Load, build (no weights downloaded) and measure the model of one config.

    A model whose output is not (batch, classes) cannot train: an error with `classifier`
    (validate), a warning otherwise (a summary may describe a stack of convolutions alone).
    """
    from cnncli.config.loading import load_config
    from cnncli.errors import ConfigError
    from cnncli.model.builder import build_checked, check_classes, check_output
    from cnncli.model.geometry import summarize
    from cnncli.model.inputs import plan_input
    from cnncli.model.raw_checks import raw_spec_problems
    from cnncli.train.phases import check_phases, phase_params

    cfg = load_config(path, overrides, spec_check=raw_spec_problems)
    plan = plan_input(cfg)
    model = build_checked(cfg, plan.shape, classifier)
    check_phases(model, cfg)
    phases = phase_params(model, cfg)  # leaves the model as the first phase trains it
    summary = summarize(model)
    warnings = plan.notes + summary.warnings + _double_scaling(cfg)
    if not classifier:
        try:
            check_output(cfg, model.outputs[0], model.layers[-1].name if cfg.model.layers else None)
        except ConfigError as exc:
            warnings.append(f"{exc.problems[0].message}; `cnn train` would refuse it")
        if len(model.outputs[0].shape) == 2 and not _loss_has_problems(cfg):
            from cnncli.model.builder import layer_names
            from cnncli.model.output_loss import loss_output_problems

            warnings += [
                f"{p.path}: {p.message}; `cnn train` would refuse it"
                for p in loss_output_problems(cfg, model, layer_names(cfg.model.layers))
            ]
    if plan.num_classes is not None and len(model.outputs[0].shape) == 2:
        try:
            check_classes(cfg, int(model.outputs[0].shape[-1]), plan.num_classes)
        except ConfigError as exc:
            if classifier:  # validate: train would refuse it
                raise
            warnings.append(exc.problems[0].message)
    from cnncli.train.augment import augmentation_problems

    problems = augmentation_problems(cfg, plan.shape)
    if problems and classifier:  # validate: train would refuse it
        raise cfg.locate(problems)
    warnings += [f"{p.path}: {p.message}; `cnn train` would refuse it" for p in problems]
    shown = ", ".join(map(str, path)) if isinstance(path, list) else str(path)
    return SummaryResult(shown, plan.shape, summary, warnings, phases, cfg._groups)


def _loss_has_problems(cfg) -> bool:
    from cnncli.config.learning import loss_problems

    return bool(loss_problems(cfg.train.loss))


def _double_scaling(cfg) -> list[str]:
    """A Rescaling in model.layers when the model already scales its input: pixels scaled twice."""
    from cnncli.config.yamlio import format_path
    from cnncli.errors import Problem

    first = "the backbone's preprocessing" if cfg.model.backbone is not None else "Rescaling(1/255)"
    out = []
    for i, spec in enumerate(cfg.model.layers):
        if spec.type.replace("_", "").lower() == "rescaling":
            path = ("model", "layers", i)
            line = cfg.line_of(path)
            file = getattr(line, "file", None)
            where = (f"{file}:{line}: " if file and file != cfg._file else f"line {line}: ") if line else ""
            shown = Problem("", format_path(path), line).shown_path()  # its place in a block, if it came from one
            out.append(
                f"{where}{shown}: a Rescaling layer, but cnn already scales the raw pixels "
                f"({first} is the model's first layer), so they would be scaled twice; remove it"
            )
    return out


def validate_file(path: str | Path, overrides: list[str]) -> ValidateResult:
    """Check one config file (with overrides) as `cnn validate` does, without raising."""
    if Path(path).is_dir():  # a folder given without any config in it (config_files keeps it to say so)
        message = "a folder with no config files (*.yaml, *.yml) in it"
        return ValidateResult(str(path), False, error=f"{path}: {message}", problems=[(str(path), None, message)])
    try:
        result = summarize_config(path, overrides, classifier=True)
    except UsageError:  # a malformed --set is the command line's fault, the same for every file
        raise
    except CnnError as exc:
        return ValidateResult(str(path), False, error=str(exc), problems=_problems(exc, str(path)))
    from cnncli.config.loading import load_config
    from cnncli.errors import ConfigError

    cfg = load_config(path, overrides)
    if cfg.search is not None:  # what `cnn tune` would refuse before its first trial
        from cnncli.tune.space import search_problems

        problems = search_problems(cfg, path, overrides)
        if problems:
            refused = ConfigError(problems, cfg._file)
            return ValidateResult(str(path), False, error=str(refused), problems=_problems(refused, str(path)))
    return ValidateResult(
        str(path),
        True,
        total_params=result.summary.total_params,
        input_shape=result.input_shape,
        warnings=result.warnings,
        config_yaml=cfg.to_yaml(),
    )


def _problems(exc: CnnError, file: str) -> list[tuple]:
    """(file, line, message) for each problem of an error; the file of the value when it came from a base."""
    from cnncli.errors import ConfigError

    if not isinstance(exc, ConfigError):
        return [(file, None, str(exc))]
    out = []
    for p in exc.problems:
        where = getattr(p.line, "file", None) or exc.file or file
        text = f"{p.shown_path()}: {p.full_message()}" if p.path else p.full_message()
        given = getattr(p.line, "given", None)  # set on the command line: the file has no line for it
        text = f"{given}: {text}" if given else text
        out.append((where, int(p.line) if p.line else None, text))
    return out


def config_files(paths: list[Path]) -> list[Path]:
    """The files to check: each file given, and the *.yaml / *.yml files of each folder given."""
    out: list[Path] = []
    for path in paths:
        found = (
            sorted(p for p in Path(path).iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if Path(path).is_dir()
            else []
        )
        out += found or [Path(path)]  # a folder without configs stays, to be reported as not a config
    return out


def github_annotations(result: ValidateResult) -> list[str]:
    """GitHub Actions workflow commands (`::error file=...,line=...::message`) for one file's result."""

    def prop(text: str) -> str:
        return _escape(text).replace(":", "%3A").replace(",", "%2C")

    lines = []
    for file, line, message in result.problems:
        where = f"file={prop(file)}" + (f",line={line}" if line else "")
        lines.append(f"::error {where}::{_escape(message)}")
    for warning in result.warnings:
        lines.append(f"::warning file={prop(result.file)}::{_escape(warning)}")
    return lines


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
