"""`cnn summary` and `cnn validate`: build the model from a config and describe it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cnncli.errors import CnnError


@dataclass
class SummaryResult:
    file: str
    input_shape: tuple
    summary: object  # geometry.Summary
    warnings: list[str] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)  # per training phase: trainable / frozen parameters

    def as_json(self) -> dict:
        data = self.summary.as_json()
        data["input_shape"] = [None, *self.input_shape]
        data["phases"] = self.phases
        data["warnings"] = self.warnings
        return data


@dataclass
class ValidateResult:
    file: str
    ok: bool
    error: str = ""
    total_params: int = 0
    input_shape: tuple = ()
    warnings: list[str] = field(default_factory=list)
    config_yaml: str = ""

    def as_json(self) -> dict:
        return {"file": self.file, "ok": self.ok, "error": self.error or None,
                "total_params": self.total_params, "input_shape": list(self.input_shape),
                "warnings": self.warnings}


def summarize_config(path: str | Path, overrides: list[str], classifier: bool = False) -> SummaryResult:
    """Load, build (no weights downloaded) and measure the model of one config.

    A model whose output is not (batch, classes) cannot train: an error with `classifier`
    (validate), a warning otherwise (a summary may describe a stack of convolutions alone).
    """
    from cnncli.builder import build_checked, check_classes, check_output, raw_spec_problems
    from cnncli.errors import ConfigError
    from cnncli.config import load_config
    from cnncli.geometry import summarize
    from cnncli.inputs import plan_input
    from cnncli.train.phases import check_phases, phase_params

    cfg = load_config(path, overrides, spec_check=raw_spec_problems)
    plan = plan_input(cfg)
    model = build_checked(cfg, plan.shape, classifier)
    check_phases(model, cfg)
    phases = phase_params(model, cfg)  # leaves the model as the first phase trains it
    summary = summarize(model)
    warnings = plan.notes + summary.warnings
    if not classifier:
        try:
            check_output(cfg, model.outputs[0], model.layers[-1].name if cfg.model.layers else None)
        except ConfigError as exc:
            warnings.append(f"{exc.problems[0].message}; `cnn train` would refuse it")
    if plan.num_classes is not None and len(model.outputs[0].shape) == 2:
        try:
            check_classes(cfg, int(model.outputs[0].shape[-1]), plan.num_classes)
        except ConfigError as exc:
            if classifier:  # validate: train would refuse it
                raise
            warnings.append(exc.problems[0].message)
    return SummaryResult(str(path), plan.shape, summary, warnings, phases)


def validate_file(path: str | Path, overrides: list[str]) -> ValidateResult:
    try:
        result = summarize_config(path, overrides, classifier=True)
    except CnnError as exc:
        return ValidateResult(str(path), False, error=str(exc))
    from cnncli.config import load_config

    return ValidateResult(str(path), True, total_params=result.summary.total_params,
                          input_shape=result.input_shape, warnings=result.warnings,
                          config_yaml=load_config(path, overrides).to_yaml())
