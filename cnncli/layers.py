"""The one registry of Keras classes a config may name, and their argument checks.

A layer's `type` is any public `keras.layers` class (case-insensitive,
snake_case accepted); its other keys are that class's constructor arguments.
The same checks serve optimizers, learning-rate schedules, backbones and
augmentation layers, so every "unknown argument" reads the same way.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from cnncli import compat
from cnncli.errors import ConfigError, Problem, did_you_mean
from cnncli.layer_args import (is_regularizer_arg, keras_arguments, kwargs_names, quiet_legacy_names,
                               regularizer_problems)
from cnncli.registry import Registry, UnknownName, normalize

# Classes that would run arbitrary code or wrap foreign frameworks: never built from YAML.
_EXCLUDED_LAYERS = {"Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer", "Layer",
                    "InputLayer", "Wrapper", "RNN", "Bidirectional", "TimeDistributed", "Pipeline"}
# Why the code-running ones are refused, for a clearer message than "unknown layer type".
_REFUSED = {"Lambda": "runs arbitrary Python code", "TFSMLayer": "loads and runs an external SavedModel",
            "TorchModuleWrapper": "wraps PyTorch code", "JaxLayer": "wraps JAX code", "FlaxLayer": "wraps Flax code"}
# Arguments every Keras layer takes through **kwargs (keras.layers.Layer.__init__).
_BASE_LAYER_ARGS = ("trainable", "dtype", "autocast", "activity_regularizer")
# Keys a spec carries that are ours, not the class's.
_SPEC_KEYS = ("type", "name", "inputs")


def _keras_layers() -> dict[str, type]:
    import keras

    out = {}
    for name in dir(keras.layers):
        obj = getattr(keras.layers, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer) and name not in _EXCLUDED_LAYERS:
            out[name] = obj
    return out


def _keras_optimizers() -> dict[str, type]:
    import keras

    return {n: getattr(keras.optimizers, n) for n in dir(keras.optimizers)
            if isinstance(getattr(keras.optimizers, n), type)
            and issubclass(getattr(keras.optimizers, n), keras.optimizers.Optimizer)
            and n not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")}


def _keras_applications() -> dict[str, Any]:
    import keras

    return {n: getattr(keras.applications, n) for n in dir(keras.applications)
            if n[0].isupper() and callable(getattr(keras.applications, n))}


LAYERS: Registry[type] = Registry("layer type", loader=_keras_layers)
OPTIMIZERS: Registry[type] = Registry("optimizer", loader=_keras_optimizers)
BACKBONES: Registry[Any] = Registry("backbone", loader=_keras_applications)


def list_layers() -> list[str]:
    return LAYERS.names()


def list_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def list_backbones() -> list[str]:
    return BACKBONES.names()


def accepted_args(target: Any, extra: tuple[str, ...] = ()) -> list[str]:
    """Keyword arguments a class or function takes, as a user may write them."""
    fn = target.__init__ if isinstance(target, type) else target
    params = inspect.signature(fn).parameters.values()
    names = [p.name for p in params
             if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names + [e for e in extra if e not in names]


def check_args(args: dict[str, Any], target: Any, what: str, path: str,
               extra: tuple[str, ...] = ()) -> list[Problem]:
    """One problem per argument `target` does not take, listing the ones it does."""
    valid = accepted_args(target, extra)
    problems = []
    for key, value in args.items():
        if key not in valid:
            problems.append(Problem(
                f"{what} takes no argument `{key}`{did_you_mean(key, valid)}; "
                f"it takes: {', '.join(valid)}", f"{path}.{key}"))
        problems += _foreign_code(value, f"{path}.{key}")
    return problems


def _foreign_code(value: Any, path: str) -> list[Problem]:
    """Serialized Keras objects in arguments (`{class_name, config, module}`) may only come from Keras.

    Keras deserializes such dicts itself; a `module` outside Keras would be imported
    (Keras before 3.9 did so; CVE-2025-1550) and a `__lambda__` carries bytecode. Refused
    here whatever the Keras version, so nothing in a config imports or runs code.
    """
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _foreign_code(item, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    module, name = value.get("module"), value.get("class_name")
    if name == "__lambda__" or (module is not None and str(module).split(".")[0] not in _KERAS_PACKAGES):
        what = "Python bytecode (a lambda)" if name == "__lambda__" else f"an object from module `{module}`"
        return [Problem(f"{what} is not allowed in a config: nothing is imported or run from YAML; "
                        "use Keras's own names, e.g. `activation: relu`", path)]
    return [p for key, item in value.items() for p in _foreign_code(item, f"{path}.{key}")]


_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")  # what Keras itself agrees to import


def resolve(registry: Registry, name: str, path: str) -> tuple[Any, list[Problem]]:
    try:
        return registry.get(name), []
    except UnknownName as exc:
        return None, [Problem(str(exc), path)]


def check_layer_specs(specs, base_path: str) -> list[Problem]:
    """Problems in a list of layer specs: unknown types, unknown arguments."""
    return [p for i, spec in enumerate(specs) for p in check_layer_spec(spec, f"{base_path}[{i}]")]


def check_layer_spec(spec, path: str) -> list[Problem]:
    """Problems in one layer spec at `path` (e.g. "model.layers[2]")."""
    refused = [n for n in _REFUSED if normalize(n) == normalize(spec.type)]
    if refused:
        return [Problem(f"layer type `{refused[0]}` is not allowed in a config: it "
                        f"{_REFUSED[refused[0]]}; use built-in layers", f"{path}.type")]
    cls, problems = resolve(LAYERS, spec.type, f"{path}.type")
    if cls is not None:
        problems += check_args(spec.args, cls, f"{cls.__name__}", path, _BASE_LAYER_ARGS + kwargs_names(cls))
        problems += [p for k, v in spec.args.items() if is_regularizer_arg(k)
                     for p in regularizer_problems(v, f"{path}.{k}")]
    return problems


def make_layer(spec, name: str, path: str, **overrides):
    """Construct the Keras layer for a spec whose arguments were already checked."""
    cls = LAYERS.get(spec.type)
    try:
        with quiet_legacy_names(cls, spec.args):
            return cls(name=name, **{**keras_arguments(spec.args), **overrides})
    except Exception as exc:  # Keras checks arguments unevenly (AttributeError for a None string...): all are ours
        message = keras_message(exc)
        if not isinstance(exc, (ValueError, TypeError, KeyError)):
            message = f"cannot be built from these arguments ({type(exc).__name__}: {message})"
        # Point at the argument Keras complains about, so the line is the argument's own.
        named = [k for k in spec.args if f"`{k}`" in message or f"{k}=" in message]
        where = f"{path}.{named[0]}" if named else path
        raise ConfigError([Problem(f"{cls.__name__}: {message}", where)]) from None


def make_optimizer(spec, path: str = "train.optimizer", **overrides):
    cls, problems = resolve(OPTIMIZERS, spec.type, f"{path}.type")
    if not problems:
        problems = check_args(spec.args, cls, cls.__name__, path)
    if problems:
        raise ConfigError(problems)
    try:
        return cls(**{**spec.args, **overrides})
    except Exception as exc:  # as in make_layer: whatever the constructor raises comes from the arguments
        raise ConfigError([Problem(f"{cls.__name__}: {_first_line(exc)}", path)]) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def keras_message(exc: BaseException) -> str:
    """The sentence that explains a Keras error, without its wrapper and terminal colours.

    Errors raised inside a layer's call() come as "Exception encountered when calling
    X.call()." followed by the real reason (in ANSI bold) and a dump of the arguments.
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Exception encountered when calling"):
        lines = lines[1:]
    return lines[0] if lines else type(exc).__name__


def snake(name: str) -> str:
    """Keras's own default layer naming: Conv2D -> conv2d, MaxPooling2D -> max_pooling2d."""
    return compat.snake_case(name)


# ---------------------------------------------------------------- training vocabulary

def _keras_schedules() -> dict[str, Any]:
    import keras

    s = keras.optimizers.schedules
    table = {"exponential": s.ExponentialDecay, "step": s.PiecewiseConstantDecay, "cosine": s.CosineDecay,
             "cosine_restarts": s.CosineDecayRestarts, "inverse_time": s.InverseTimeDecay,
             "polynomial": s.PolynomialDecay, "reduce_on_plateau": keras.callbacks.ReduceLROnPlateau}
    for cls in list(table.values()):  # the Keras class names work too
        table[cls.__name__] = cls
    return table


SCHEDULES: Registry[Any] = Registry("learning-rate schedule", loader=_keras_schedules)
_SCHEDULE_KEYS = ("every",)  # ours: whether decay_steps / boundaries count epochs or steps


def list_schedules() -> list[str]:
    return [n for n in SCHEDULES.names() if not n[0].isupper()]


def accuracy_metric_name(loss: str) -> str:
    """What `accuracy` means for this loss, as keras.Model.compile decides it."""
    return "sparse_categorical_accuracy" if "sparse" in loss else "categorical_accuracy"


def make_metric(name: str, loss: str):
    import keras

    if name in ("accuracy", "acc"):
        metric = keras.metrics.get(accuracy_metric_name(loss))
        return type(metric)(name="accuracy") if isinstance(metric, keras.metrics.Metric) else \
            keras.metrics.MeanMetricWrapper(metric, name="accuracy")
    if name in ("top_5_accuracy", "top5", "top_k_accuracy"):
        return keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top_5_accuracy")
    metric = keras.metrics.get(name)
    return metric if isinstance(metric, keras.metrics.Metric) else keras.metrics.MeanMetricWrapper(metric, name=name)


def check_train_specs(cfg) -> list[Problem]:
    """Unknown optimizers, schedules, losses and metrics, with their arguments."""
    import keras

    problems: list[Problem] = []
    opt_specs = [("train.optimizer", cfg.train.optimizer)]
    opt_specs += [(f"train.phases[{i}].optimizer", p.optimizer) for i, p in enumerate(cfg.train.phases or [])
                  if p.optimizer is not None]
    for path, spec in opt_specs:
        cls, found = resolve(OPTIMIZERS, spec.type, f"{path}.type")
        problems += found or check_args(spec.args, cls, cls.__name__, path)
    if cfg.train.lr_schedule is not None:
        spec = cfg.train.lr_schedule
        cls, found = resolve(SCHEDULES, spec.type, "train.lr_schedule.type")
        problems += found or check_args(spec.args, cls, cls.__name__, "train.lr_schedule")
    try:
        keras.losses.get(cfg.train.loss)
    except (ValueError, TypeError):
        problems.append(Problem(f"unknown loss `{cfg.train.loss}`; e.g. sparse_categorical_crossentropy, "
                                "categorical_crossentropy", "train.loss"))
    names = ["loss"]
    for i, name in enumerate(cfg.train.metrics):
        try:
            names.append(make_metric(name, cfg.train.loss).name)
        except (ValueError, TypeError):
            problems.append(Problem(f"unknown metric `{name}`; e.g. accuracy, top_5_accuracy, auc",
                                    f"train.metrics[{i}]"))
    monitors = names + [f"val_{n}" for n in names]
    for path, spec in (("train.early_stopping.monitor", cfg.train.early_stopping),
                       ("train.checkpoint.monitor", cfg.train.checkpoint)):
        if spec is not None and spec.monitor not in monitors:
            problems.append(Problem(f"cannot monitor `{spec.monitor}`{did_you_mean(spec.monitor, monitors)}; "
                                    f"the run logs: {', '.join(monitors)}", path))
    return problems
