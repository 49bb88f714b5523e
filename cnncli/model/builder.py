"""Config → keras.Model: where a YAML layer becomes a Keras layer.

Models are functional: the input takes raw pixels, a scaling layer follows, then
the optional `keras.applications` backbone, then the `model.layers` list. A
layer without `inputs:` takes the previous layer's output; with `inputs:` it
takes the named layers' outputs, which is how residual and Inception-style
blocks are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cnncli.config.schema import Config
from cnncli.config.vocabulary import (
    BACKBONES,
    check_args,
    check_layer_specs,
    keras_message,
    make_layer,
    resolve,
    snake,
)
from cnncli.errors import ConfigError, Problem
from cnncli.model import backbones

if TYPE_CHECKING:
    from cnncli.config.schema import LayerSpec

INPUT_NAME = "image"  # the model's input; `inputs: [input]` refers to the scaled image


def check_model_specs(cfg: Config) -> None:
    """Every unknown Keras name or argument in the config (layers, optimizers, schedules), at once."""
    from cnncli.config.learning import check_train_specs

    problems = check_layer_specs(cfg.model.layers, "model.layers")
    problems += check_train_specs(cfg)
    problems += check_layer_specs(cfg.data.augment, "data.augment")
    if cfg.model.backbone is not None:
        problems += backbone_problems(cfg.model.backbone)
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
        problems += backbone_problems(cfg.model.backbone)
    if problems:
        check_model(cfg)
        raise cfg.locate(problems)  # check_model raises these itself; kept so that no path goes on


def backbone_problems(spec: Any) -> list[Problem]:
    """Problems in `model.backbone`'s name and arguments (a backbone taken from a run is checked when read)."""
    if spec.name is None:  # from_run: checked when the earlier model is read (cnncli.model.backbones)
        return []
    fn, problems = resolve(BACKBONES, spec.name, "model.backbone.name")
    if fn is not None:
        problems += check_args(spec.args, fn, fn.__name__, "model.backbone")
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


def build_model(
    cfg: Config,
    input_shape: Sequence[int],
    load_weights: bool = True,
    output_dtype: str | None = None,
    specs_checked: bool = False,
    classifier: bool = True,
) -> Any:
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
        # A backbone from a run scales its input as it did in its own run.
        x = backbones.build_backbone(cfg, input_shape, load_weights)(inputs)
    elif cfg.model.backbone is not None:
        base = backbones.build_backbone(cfg, input_shape, load_weights)
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
        raise cfg.error(
            f"the backbone outputs shape {_fmt(tuple(x.shape))}, not (batch, classes); add layers "
            "ending in a Dense layer, e.g. {type: GlobalAveragePooling2D} then {type: Dense, units: N}",
            ("model", "backbone"),
        )
    last = len(cfg.model.layers) - 1
    raise cfg.error(
        f"the last layer `{last_name}` ({cfg.model.layers[last].type}) outputs shape "
        f"{_fmt(tuple(x.shape))}, but a classifier outputs (batch, classes); put a "
        "{type: Flatten} or {type: GlobalAveragePooling2D} before the Dense layers",
        ("model", "layers", last),
    )


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
    message = (
        f"{source}: labels go up to {num_classes - 1} ({num_classes} classes) but the model outputs {outputs} values"
        if outputs < num_classes
        else f"the model outputs {outputs} values but {source} has {num_classes} classes, so some outputs "
        "would belong to no class"
    )
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
        raise cfg.error(
            f"{type_name} output shape {_fmt(tuple(out.shape))} reaches zero; "
            "the input is too small for this many layers, or the kernel/stride too large",
            path,
        )
    return out


def _takes_tensors_apart(layer) -> bool:
    """True for layers called as layer(a, b) (MultiHeadAttention's query, value), not layer([a, b]) (Add)."""
    import inspect

    params = [p for p in inspect.signature(layer.call).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
    return len(params) > 1 and params[0].name != "inputs" and params[1].default is inspect.Parameter.empty


def _fmt(shape) -> str:
    return str(shape).replace("None", "batch")
