"""The one registry of Keras classes a config may name, and their argument checks.

A layer's `type` is any public `keras.layers` class (case-insensitive,
snake_case accepted); its other keys are that class's constructor arguments.
The same checks serve optimizers, learning-rate schedules, backbones and
augmentation layers, so every "unknown argument" reads the same way.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from cnncli import compat
from cnncli.config.layer_args import (
    is_regularizer_arg,
    keras_arguments,
    kwargs_names,
    quiet_legacy_names,
    regularizer_problems,
)
from cnncli.errors import ConfigError, Problem, closest, did_you_mean
from cnncli.registry import Registry, UnknownName, normalize

if TYPE_CHECKING:
    from cnncli.config.schema import LayerSpec

# Classes that would run arbitrary code or wrap foreign frameworks: never built from YAML.
_EXCLUDED_LAYERS = {
    "Lambda",
    "TFSMLayer",
    "TorchModuleWrapper",
    "JaxLayer",
    "FlaxLayer",
    "Layer",
    "InputLayer",
    "Wrapper",
    "RNN",
    "Bidirectional",
    "TimeDistributed",
    "Pipeline",
}
# Why the code-running ones are refused, for a clearer message than "unknown layer type".
_REFUSED = {
    "Lambda": "runs arbitrary Python code",
    "TFSMLayer": "loads and runs an external SavedModel",
    "TorchModuleWrapper": "wraps PyTorch code",
    "JaxLayer": "wraps JAX code",
    "FlaxLayer": "wraps Flax code",
}
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


def _keras_applications() -> dict[str, Any]:
    import keras

    return {
        n: getattr(keras.applications, n)
        for n in dir(keras.applications)
        if n[0].isupper() and callable(getattr(keras.applications, n))
    }


LAYERS: Registry[type] = Registry("layer type", loader=_keras_layers)
BACKBONES: Registry[Any] = Registry("backbone", loader=_keras_applications)


def list_layers() -> list[str]:
    """Keras layer types a config may name."""
    return LAYERS.names()


def list_augmentations() -> list[str]:
    """The image preprocessing and augmentation layers, the ones `data.augment` is for."""
    return [n for n in LAYERS.names() if compat.is_image_augmentation(LAYERS.get(n))]


def list_backbones() -> list[str]:
    """keras.applications backbones a config may name."""
    return BACKBONES.names()


def _parameters(target: Any) -> list[inspect.Parameter]:
    fn = cast(Any, target).__init__ if isinstance(target, type) else target  # the class's own __init__
    return [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]


def accepted_args(target: Any, extra: tuple[str, ...] = ()) -> list[str]:
    """Keyword arguments a class or function takes, as a user may write them."""
    names = [p.name for p in _parameters(target)]
    return names + [e for e in extra if e not in names]


def check_args(
    args: dict[str, Any],
    target: Any,
    what: str,
    path: str,
    extra: tuple[str, ...] = (),
    given: tuple[str, ...] = ("name",),
) -> list[Problem]:
    """Problems in the arguments of `target`: unknown ones (listing those it takes), missing
    required ones, and values of the wrong kind. `given`: arguments cnncli passes itself."""
    valid = accepted_args(target, extra)
    params = {p.name: p for p in _parameters(target)}
    problems = []
    meant = {hit for key in args if key not in valid for hit in closest(key, valid)}  # a typo says it already
    missing = [
        n for n, p in params.items() if p.default is p.empty and n not in args and n not in given and n not in meant
    ]
    if missing:
        problems.append(Problem(f"{what}: missing {', '.join(missing)}", path))
    for key, value in args.items():
        if key not in valid:
            problems.append(
                Problem(
                    f"{what} takes no argument `{key}`{did_you_mean(key, valid)}; it takes: {', '.join(valid)}",
                    f"{path}.{key}",
                )
            )
            continue
        found = _foreign_code(value, f"{path}.{key}")
        param = params.get(key)
        problems += found or _value_problems(
            key, value, param.default if param else inspect.Parameter.empty, f"{path}.{key}"
        )
    return problems


# What the value of a well-known argument must be, whichever Keras class takes it.
_INT_ARGS = {
    "filters",
    "units",
    "groups",
    "depth_multiplier",
    "num_heads",
    "key_dim",
    "value_dim",
    "output_dim",
    "input_dim",
    "decay_steps",
    "first_decay_steps",
    "patience",
    "cooldown",
    "height",
    "width",
    "gradient_accumulation_steps",
    "ema_overwrite_frequency",
    "warmup_steps",
}
_INTS_ARGS = {"kernel_size", "strides", "pool_size", "dilation_rate", "size"}  # an integer or a list of them
# Sizes, counts and steps: Keras refuses 0 (most when the layer is made, strides and sides at its first call).
# Every integer argument but the four for which 0 means "none" or "at once".
_POSITIVE_ARGS = _INTS_ARGS | (_INT_ARGS - {"patience", "cooldown", "ema_overwrite_frequency", "warmup_steps"})
# Keras takes 0 here: a schedule warming up from 0 (CosineDecay's own example: initial_learning_rate 0,
# warmup_target 0.003), a rate of 0 that holds weights still, an epsilon of 0.
# A negative value is never meant (a negative rate climbs the loss).
_NON_NEGATIVE_ARGS = {"learning_rate", "initial_learning_rate", "epsilon"}
_NUMBER_ARGS = {
    "rate",
    "learning_rate",
    "initial_learning_rate",
    "decay_rate",
    "momentum",
    "epsilon",
    "alpha",
    "beta_1",
    "beta_2",
    "rho",
    "min_lr",
    "min_delta",
    "l1",
    "l2",
    "stddev",
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "negative_slope",
    "max_value",
    "end_learning_rate",
    "power",
    "t_mul",
    "m_mul",
    "warmup_target",
    "ema_momentum",
    "q",
}
_NUMBERS_ARGS = {"factor", "height_factor", "width_factor"}  # a number or a [low, high] pair
_FRACTION_ARGS = {"rate"}  # Dropout and its kind: in [0, 1)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _value_problems(key: str, value: Any, default: Any, path: str) -> list[Problem]:
    """A value of the wrong kind for `key`, judged by the argument's name and its Keras default."""
    if value is None and default is None:
        return []
    got = f"got {value!r}"
    if key in _INT_ARGS:
        ok, expected = _is_int(value), "an integer"
    elif key in _INTS_ARGS:
        ok = _is_int(value) or (isinstance(value, list) and bool(value) and all(_is_int(v) for v in value))
        expected = "an integer or a list of integers"
    elif key in _NUMBER_ARGS:
        ok, expected = _is_number(value), "a number"
    elif key in _NUMBERS_ARGS:
        ok = _is_number(value) or (isinstance(value, list) and bool(value) and all(_is_number(v) for v in value))
        expected = "a number or a list of numbers"
    elif isinstance(default, bool):
        ok, expected = isinstance(value, bool), "true or false"
    elif _is_number(default):
        ok, expected = not isinstance(value, (str, bool)), "a number"
    elif key == "activation" and isinstance(value, str):
        return _activation_problems(value, path)
    else:
        return []
    if not ok:
        return [Problem(f"expected {expected}, {got}", path)]
    numbers = value if isinstance(value, list) else [value]
    if key in _POSITIVE_ARGS and any(v <= 0 for v in numbers):
        return [Problem(f"must be greater than 0, {got}", path)]
    if key in _NON_NEGATIVE_ARGS and value < 0:
        return [Problem(f"must be at least 0, {got}", path)]
    if key in _FRACTION_ARGS and not 0 <= value < 1:
        return [Problem(f"must be at least 0 and below 1, {got}", path)]
    return []


def _activation_problems(name: str, path: str) -> list[Problem]:
    import keras

    try:
        keras.activations.get(name)
    except (ValueError, TypeError):
        valid = [
            n for n in dir(keras.activations) if not n.startswith("_") and n not in ("get", "serialize", "deserialize")
        ]
        return [Problem(f"unknown activation `{name}`{did_you_mean(name, valid)}; valid: {', '.join(valid)}", path)]
    return []


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
        return [
            Problem(
                f"{what} is not allowed in a config: nothing is imported or run from YAML; "
                "use Keras's own names, e.g. `activation: relu`",
                path,
            )
        ]
    return [p for key, item in value.items() for p in _foreign_code(item, f"{path}.{key}")]


_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")  # what Keras itself agrees to import


def resolve(registry: Registry, name: str, path: str) -> tuple[Any, list[Problem]]:
    """The entry `name` of `registry`, or None with the problem at `path`."""
    try:
        return registry.get(name), []
    except UnknownName as exc:
        return None, [Problem(str(exc), path)]


def check_layer_specs(specs: Sequence[LayerSpec], base_path: str) -> list[Problem]:
    """Problems in a list of layer specs: unknown types, unknown arguments."""
    return [p for i, spec in enumerate(specs) for p in check_layer_spec(spec, f"{base_path}[{i}]")]


def check_layer_spec(spec: LayerSpec, path: str) -> list[Problem]:
    """Problems in one layer spec at `path` (e.g. "model.layers[2]")."""
    refused = [n for n in _REFUSED if normalize(n) == normalize(spec.type)]
    if refused:
        return [
            Problem(
                f"layer type `{refused[0]}` is not allowed in a config: it {_REFUSED[refused[0]]}; use built-in layers",
                f"{path}.type",
            )
        ]
    cls, problems = resolve(LAYERS, spec.type, f"{path}.type")
    if cls is not None:
        problems += check_args(spec.args, cls, f"{cls.__name__}", path, _BASE_LAYER_ARGS + kwargs_names(cls))
        problems += [
            p for k, v in spec.args.items() if is_regularizer_arg(k) for p in regularizer_problems(v, f"{path}.{k}")
        ]
    return problems


def make_layer(spec: LayerSpec, name: str, path: str, **overrides: Any) -> Any:
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
