"""The checks of a config that failed its schema: layer types, arguments and shapes
looked at in the raw YAML, so that one `cnn validate` reports every problem at once
(`load_config(..., spec_check=raw_spec_problems)`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cnncli.config.vocabulary import check_layer_spec
from cnncli.errors import ConfigError, Problem
from cnncli.model.builder import backbone_problems, build_checked, check_classes

if TYPE_CHECKING:
    from pydantic import BaseModel


def raw_spec_problems(data: Any) -> list[Problem]:
    """The checks of `check_model_specs` on YAML that failed the schema, salvaging what parses.

    Passed to `load_config(spec_check=...)` so a schema error and a mistyped layer
    argument in one file are reported together, as the config contract promises.
    """
    from pydantic import ValidationError

    from cnncli.config.schema import BackboneSpec, LayerSpec

    def section(outer: str, inner: str) -> Any:
        parent = data.get(outer) if isinstance(data, dict) else None
        return parent.get(inner) if isinstance(parent, dict) else None

    problems: list[Problem] = []
    for outer, inner in (("model", "layers"), ("data", "augment")):
        items = section(outer, inner)
        for i, item in enumerate(items if isinstance(items, list) else []):
            try:
                spec = LayerSpec.model_validate(item)
            except ValidationError:
                continue  # the schema's own message covers this item
            problems += check_layer_spec(spec, f"{outer}.{inner}[{i}]")
    backbone = section("model", "backbone")
    if isinstance(backbone, dict):
        try:
            problems += backbone_problems(BackboneSpec.model_validate(backbone))
        except ValidationError:
            pass
    problems += _raw_train_problems(
        section("train", "optimizer"),
        section("train", "lr_schedule"),
        section("train", "loss"),
        section("train", "phases"),
    )
    if not any(p.path.startswith("model.") for p in problems):
        problems += _raw_shape_problems(data)
    return problems


def _raw_shape_problems(data: Any) -> list[Problem]:
    """The model built from a file whose other sections failed: its shapes do not depend on them.

    Only `data` and `model` decide the model; when both pass the schema and the
    cross-checks, the build runs and its problem joins the report.
    """
    from pydantic import ValidationError

    from cnncli.config.loading import CROSS_CHECKS
    from cnncli.config.schema import Config
    from cnncli.errors import CnnError
    from cnncli.model.inputs import plan_input

    if not isinstance(data, dict):
        return []
    try:
        cfg = Config.model_validate({k: data[k] for k in ("name", "data", "model") if k in data})
    except ValidationError:
        return []  # the schema's messages cover data and model
    if any(check(cfg) for check in CROSS_CHECKS):
        return []
    try:
        plan = plan_input(cfg)
        model = build_checked(cfg, plan.shape, check_loss=False)  # the loss is in `train`, which failed
        if plan.num_classes is not None:
            check_classes(cfg, int(model.outputs[0].shape[-1]), plan.num_classes)
    except ConfigError as exc:
        return exc.problems
    except CnnError:
        return []  # the data cannot be described (a missing folder...): `train` says so on its own
    return []


def _raw_train_problems(optimizer: Any, schedule: Any, loss: Any, phases: Any) -> list[Problem]:
    """Optimizer, schedule and loss problems in `train` as written, for a file that failed the schema."""
    from pydantic import ValidationError

    from cnncli.config.learning import loss_problems, optimizer_problems, schedule_problems
    from cnncli.config.schema import LossSpec, OptimizerSpec, ScheduleSpec

    specs: list[tuple[Any, type[BaseModel], Callable[..., list[Problem]], str]] = [
        (optimizer, OptimizerSpec, optimizer_problems, "train.optimizer"),
        (schedule, ScheduleSpec, schedule_problems, "train.lr_schedule"),
    ]
    specs += [
        (p.get("optimizer"), OptimizerSpec, optimizer_problems, f"train.phases[{i}].optimizer")
        for i, p in enumerate(phases if isinstance(phases, list) else [])
        if isinstance(p, dict)
    ]
    problems: list[Problem] = []
    for raw, schema, check, path in specs:
        if isinstance(raw, dict):
            try:
                problems += check(schema.model_validate(raw), path)
            except ValidationError:
                continue  # the schema's own message covers it
    if isinstance(loss, str):
        problems += loss_problems(loss)
    elif isinstance(loss, dict):
        try:
            problems += loss_problems(LossSpec.model_validate(loss))
        except ValidationError:
            pass
    return problems
