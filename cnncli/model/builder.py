"""Config → keras.Model: where a YAML layer becomes a Keras layer.

Models are functional: the input takes raw pixels, a scaling layer follows, then
the optional `keras.applications` backbone, then the `model.layers` list. A
layer without `inputs:` takes the previous layer's output; with `inputs:` it
takes the named layers' outputs, which is how residual and Inception-style
blocks are written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from cnncli.config.schema import Config
from cnncli.config.vocabulary import (
    BACKBONES,
    check_args,
    check_layer_spec,
    check_layer_specs,
    keras_message,
    make_layer,
    resolve,
    snake,
)
from cnncli.errors import ConfigError, Problem

if TYPE_CHECKING:
    from pydantic import BaseModel

    from cnncli.config.schema import LayerSpec

INPUT_NAME = "image"  # the model's input; `inputs: [input]` refers to the scaled image


def check_model_specs(cfg: Config) -> None:
    """Every unknown Keras name or argument in the config (layers, optimizers, schedules), at once."""
    from cnncli.config.learning import check_train_specs

    problems = check_layer_specs(cfg.model.layers, "model.layers")
    problems += check_train_specs(cfg)
    problems += check_layer_specs(cfg.data.augment, "data.augment")
    if cfg.model.backbone is not None:
        problems += _backbone_problems(cfg.model.backbone)
    _raise_with_lines(cfg, problems)


def check_layer_args(cfg: Config) -> None:
    """The layers' names and arguments checked without starting TensorFlow, for `cnn train` to run
    before anything reads them (the step-cost estimate that sets the thread pools).

    On a problem it raises what `check_model` (and so `cnn validate`) raises: every problem of
    the file at once; that starts TensorFlow, which no longer matters as the run ends there.
    """
    problems = check_layer_specs(cfg.model.layers, "model.layers")
    problems += check_layer_specs(cfg.data.augment, "data.augment")
    if cfg.model.backbone is not None:
        problems += _backbone_problems(cfg.model.backbone)
    if problems:
        check_model(cfg)
        raise cfg.locate(problems)  # check_model raises these itself; kept so that no path goes on


def _backbone_problems(spec) -> list[Problem]:
    if spec.name is None:  # from_run: checked when the earlier model is read (cnncli.model.backbones)
        return []
    fn, problems = resolve(BACKBONES, spec.name, "model.backbone.name")
    if fn is not None:
        problems += check_args(spec.args, fn, fn.__name__, "model.backbone")
    return problems


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
            problems += _backbone_problems(BackboneSpec.model_validate(backbone))
        except ValidationError:
            pass
    problems += _raw_train_problems(section("train", "optimizer"), section("train", "lr_schedule"),
                                    section("train", "loss"), section("train", "phases"))
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
             (schedule, ScheduleSpec, schedule_problems, "train.lr_schedule")]
    specs += [(p.get("optimizer"), OptimizerSpec, optimizer_problems, f"train.phases[{i}].optimizer")
              for i, p in enumerate(phases if isinstance(phases, list) else []) if isinstance(p, dict)]
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


def _raise_with_lines(cfg: Config, problems: list[Problem]) -> None:
    if problems:
        raise cfg.locate(problems)


def _as_config_error(cfg: Config, exc: ConfigError) -> ConfigError:
    """Attach file and line numbers to a ConfigError raised below this module."""
    return cfg.locate(exc.problems, exc.file)


def layer_names(specs: Sequence[LayerSpec]) -> list[str]:
    """Stable names: the spec's `name`, else Keras's snake_case name with a per-model counter."""
    counts: dict[str, int] = {}
    taken = {s.name for s in specs if s.name}
    names = []
    for spec in specs:
        if spec.name:
            names.append(spec.name)
            continue
        from cnncli.config.vocabulary import LAYERS

        base = snake(LAYERS.get(spec.type).__name__)
        while True:
            n = counts.get(base, 0)
            counts[base] = n + 1
            candidate = base if n == 0 else f"{base}_{n}"
            if candidate not in taken:
                break
        taken.add(candidate)
        names.append(candidate)
    return names


def build_backbone(cfg: Config, input_shape: Sequence[int], load_weights: bool = True) -> Any:
    """The base model of `model.backbone`: a keras.applications model, or layers of an earlier run."""
    from cnncli.model import backbones

    spec = cfg.model.backbone
    assert spec is not None  # callers build a backbone only when the config has one
    if spec.from_run is not None:
        base = backbones.build_from_run(cfg, input_shape)
        base.trainable = spec.trainable
        return base
    assert spec.name is not None  # the schema asks for `name` or `from_run`
    fn = BACKBONES.get(spec.name)
    backbones.check_application_input(cfg, fn.__name__, input_shape)
    weights = spec.weights if load_weights else None
    weights_file = weights if weights not in (None, "imagenet") else None
    if weights_file:
        backbones.check_weights_file(cfg, weights_file)
    # A weights file is loaded below, not by keras.applications, so that a mismatch is reported at `weights`.
    kwargs: dict[str, Any] = dict(include_top=spec.include_top, weights=None if weights_file else weights,
                                  input_shape=tuple(input_shape))
    if not spec.include_top:
        kwargs["pooling"] = spec.pooling
    try:
        with _offline_weights_hint(fn.__name__) as hint:
            base = fn(**kwargs, **spec.args)
    except ConfigError:
        raise
    except Exception as exc:  # Keras raises ValueError for shapes, OSError/URL errors for downloads
        if hint.missing:
            raise cfg.error(hint.message(), ("model", "backbone", "weights")) from None
        message = keras_message(exc)
        where = backbones.input_key(cfg) if "input_shape" in message else ("model", "backbone")
        raise cfg.error(f"model.backbone {fn.__name__}: {message}", where) from None
    if weights_file:
        backbones.load_weights_file(cfg, base, weights_file)
    base.trainable = spec.trainable
    return base


class _WeightsHint:
    def __init__(self, backbone: str):
        self.backbone = backbone
        self.missing: tuple[str, str] | None = None  # (file name, cache dir)
        self.was_corrupt = False  # a file was there but failed Keras's checksum

    def message(self) -> str:
        assert self.missing is not None  # asked only once a missing file was seen
        fname, cache = self.missing
        found = (" (a file of that name was there but did not match its published checksum, an incomplete "
                 "download?, and Keras removed it)" if self.was_corrupt else "")
        return (f"ImageNet weights for {self.backbone} are not in Keras's cache and cannot be downloaded{found}; "
                f"place `{fname}` in `{cache}` so that {os.path.join(cache, fname)} exists "
                "(Keras's cache is $KERAS_HOME/models, by default ~/.keras/models), "
                "or set `weights: null` or a path to a weights file")


@contextlib.contextmanager
def _offline_weights_hint(backbone: str):
    """Remember which file keras.applications asked for, so an offline failure can name it.

    keras.applications calls keras.src.utils.file_utils.get_file directly and, when the
    download fails, reports only the URL; the cache location is what a user needs.
    """
    from cnncli import compat

    hint = _WeightsHint(backbone)
    file_utils = compat.file_utils()
    if file_utils is None:  # this Keras moved get_file: its own error, without the cache path
        yield hint
        return
    real = file_utils.get_file

    def recording_get_file(fname=None, origin=None, *args, cache_subdir="datasets", cache_dir=None, **kw):
        cache = compat.cache_dir(cache_subdir, cache_dir or compat.keras_home())  # where get_file looks
        hint.missing = (fname or os.path.basename(origin or ""), str(cache))
        hint.was_corrupt = os.path.exists(os.path.join(*reversed(hint.missing)))
        path = real(fname, origin, *args, cache_subdir=cache_subdir, cache_dir=cache_dir, **kw)
        hint.missing = None
        return path

    file_utils.get_file = recording_get_file
    try:
        yield hint
    finally:
        file_utils.get_file = real


def build_model(cfg: Config, input_shape: Sequence[int], load_weights: bool = True,
                output_dtype: str | None = None, specs_checked: bool = False, classifier: bool = True) -> Any:
    """The Keras model for `cfg`, taking raw pixels of `input_shape`.

    `load_weights=False` builds a backbone untrained (for summaries: same shapes and
    counts, no download). `output_dtype="float32"` keeps the last layer in float32
    under a mixed-precision policy, as Keras's mixed-precision guide advises.
    """
    import keras

    from cnncli.model.preprocessing import backbone_mode, input_scaling

    if not specs_checked:
        check_model_specs(cfg)
    inputs = keras.Input(shape=tuple(input_shape), name=INPUT_NAME)
    if cfg.model.backbone is not None and cfg.model.backbone.from_run is not None:
        x = build_backbone(cfg, input_shape, load_weights)(inputs)  # scales its input as it did in its own run
    elif cfg.model.backbone is not None:
        base = build_backbone(cfg, input_shape, load_weights)
        name = cfg.model.backbone.name
        assert name is not None  # a backbone is named, or taken from a run (above)
        x = input_scaling(backbone_mode(BACKBONES.canonical(name) or name), base)(inputs)
        x = base(x)
    else:
        x = keras.layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    outputs = {"input": x}
    specs = cfg.model.layers
    names = layer_names(specs)
    for i, (spec, name) in enumerate(zip(specs, names, strict=True)):
        path = f"model.layers[{i}]"
        extra = {"dtype": output_dtype} if output_dtype and i == len(specs) - 1 else {}
        try:
            layer = make_layer(spec, name, path, **extra)
        except ConfigError as exc:
            raise _as_config_error(cfg, exc) from None
        args = [outputs[r] for r in spec.inputs] if spec.inputs else [x]
        x = _call_layer(cfg, layer, args[0] if len(args) == 1 else args, path, spec.type)
        outputs[name] = x
    if classifier:
        check_output(cfg, x, names[-1] if names else None)
    # Keras refuses a `/` in a model's name; a run name may hold one (its directory is sanitised apart)
    return keras.Model(inputs, x, name=(cfg.name or "model").replace("/", "-"))


def check_output(cfg: Config, x: Any, last_name: str | None) -> None:
    """A classifier's output is (batch, classes); anything else would fail only in the first training step."""
    if len(x.shape) == 2:
        return
    if last_name is None:
        raise cfg.error(f"the backbone outputs shape {_fmt(tuple(x.shape))}, not (batch, classes); add layers "
                        "ending in a Dense layer, e.g. {type: GlobalAveragePooling2D} then {type: Dense, units: N}",
                        ("model", "backbone"))
    last = len(cfg.model.layers) - 1
    raise cfg.error(f"the last layer `{last_name}` ({cfg.model.layers[last].type}) outputs shape "
                    f"{_fmt(tuple(x.shape))}, but a classifier outputs (batch, classes); put a "
                    "{type: Flatten} or {type: GlobalAveragePooling2D} before the Dense layers",
                    ("model", "layers", last))


def check_model(cfg: Config) -> None:
    """Every check `cnn validate` makes, before any data is read (see `build_checked`)."""
    from cnncli.model.inputs import plan_input

    plan = plan_input(cfg)
    model = build_checked(cfg, plan.shape)
    if plan.num_classes is not None:
        check_classes(cfg, int(model.outputs[0].shape[-1]), plan.num_classes)


def check_classes(cfg: Config, outputs: int, num_classes: int, source: str | None = None) -> None:
    """One output per class: fewer leave labels without an output, more leave outputs without a class."""
    if outputs == num_classes:
        return
    source = source or cfg.data.path or cfg.data.dataset
    message = (f"{source}: labels go up to {num_classes - 1} ({num_classes} classes) but the model outputs "
               f"{outputs} values" if outputs < num_classes else
               f"the model outputs {outputs} values but {source} has {num_classes} classes, so some outputs "
               "would belong to no class")
    message += f"; set the last layer's units to {num_classes}"
    last = len(cfg.model.layers) - 1
    if last >= 0 and "units" in cfg.model.layers[last].args:
        raise cfg.error(message, ("model", "layers", last, "units"))
    raise ConfigError.single(message, file=cfg._file)


def build_checked(cfg: Config, input_shape: Sequence[int], classifier: bool = True, check_loss: bool = True) -> Any:
    """The model built without weights after every name and argument check, all problems reported together.

    Problems in the training vocabulary (optimizer, schedule, loss) do not stop the
    build, so shapes are checked too; broken layer specs do, as the build needs them.
    `classifier=False` accepts any output shape (a summary of a feature extractor); a classifier's
    output must also be what the loss reads it as (probabilities or logits), unless not `check_loss`.
    """
    try:
        check_model_specs(cfg)
        problems: list[Problem] = []
    except ConfigError as exc:
        if any(p.path.startswith("model.") for p in exc.problems):
            raise
        problems = exc.problems
    try:
        model = build_model(cfg, input_shape, load_weights=False, specs_checked=True, classifier=classifier)
    except ConfigError as exc:
        problems += _as_config_error(cfg, exc).problems
    else:
        if classifier and check_loss and not any(p.path.startswith("train.loss") for p in problems):
            from cnncli.model.output_loss import loss_output_problems

            problems += loss_output_problems(cfg, model, layer_names(cfg.model.layers))
    _raise_with_lines(cfg, sorted(problems, key=lambda p: p.line or 0))
    return model


def _call_layer(cfg: Config, layer, arg, path: str, type_name: str):
    try:
        out = layer(*arg) if isinstance(arg, list) and _takes_tensors_apart(layer) else layer(arg)
    except Exception as exc:  # Keras reports impossible shapes as ValueError (sometimes others)
        shapes = [tuple(a.shape) for a in arg] if isinstance(arg, list) else tuple(arg.shape)
        message = keras_message(exc)
        raise cfg.error(f"{type_name} cannot take input of shape {_fmt(shapes)}: {message}", path) from None
    dims = [d for d in out.shape[1:] if d is not None]
    if any(d <= 0 for d in dims):
        raise cfg.error(f"{type_name} output shape {_fmt(tuple(out.shape))} reaches zero; "
                        "the input is too small for this many layers, or the kernel/stride too large", path)
    return out


def _takes_tensors_apart(layer) -> bool:
    """True for layers called as layer(a, b) (MultiHeadAttention's query, value), not layer([a, b]) (Add)."""
    import inspect

    params = [p for p in inspect.signature(layer.call).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    return len(params) > 1 and params[0].name != "inputs" and params[1].default is inspect.Parameter.empty


def _fmt(shape) -> str:
    return str(shape).replace("None", "batch")
