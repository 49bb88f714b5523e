"""The Keras vocabulary of learning a config may name: optimizers, learning-rate
schedules, losses and metrics, their constructors and the checks of `train:`.

Names and arguments are checked as layers' are (config/vocabulary.py), so every
"unknown argument" reads the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnncli.config.vocabulary import check_args, keras_message, resolve, snake
from cnncli.errors import ConfigError, Problem, did_you_mean
from cnncli.registry import Registry

if TYPE_CHECKING:
    from cnncli.config.schema import Config, LossSpec, OptimizerSpec, ScheduleSpec


def _keras_optimizers() -> dict[str, type]:
    import keras

    return {
        n: getattr(keras.optimizers, n)
        for n in dir(keras.optimizers)
        if isinstance(getattr(keras.optimizers, n), type)
        and issubclass(getattr(keras.optimizers, n), keras.optimizers.Optimizer)
        and n not in ("Optimizer", "LossScaleOptimizer", "MultiOptimizer")
    }


OPTIMIZERS: Registry[type] = Registry("optimizer", loader=_keras_optimizers)


def list_optimizers() -> list[str]:
    """Keras optimizers a config may name."""
    return OPTIMIZERS.names()


# Ours, beside the constructor's arguments: the names Keras's `optimizer.exclude_from_weight_decay(var_names=...)`
# takes (it is a method, called before the optimizer is built, not an argument).
_OPTIMIZER_KEYS = ("exclude_from_weight_decay",)


def optimizer_args(spec: OptimizerSpec) -> dict[str, Any]:
    """The constructor's arguments of an optimizer spec (without cnncli's own keys)."""
    return {k: v for k, v in spec.args.items() if k not in _OPTIMIZER_KEYS}


def excluded_from_decay(spec: OptimizerSpec) -> list[str]:
    """`exclude_from_weight_decay`: parts of variable names (`bias`, `gamma`, `beta`) weight decay skips."""
    return list(spec.args.get("exclude_from_weight_decay") or [])


def make_optimizer(spec: OptimizerSpec, path: str = "train.optimizer", **overrides: Any) -> Any:
    """A Keras optimizer built from `spec` (`overrides` replace its arguments), or a ConfigError.

    `exclude_from_weight_decay` is handed to the optimizer's own method of that name, so it
    must not be built yet (build it on the variables afterwards, as Keras does on first use).
    """
    problems = optimizer_problems(spec, path, construct=False)
    if problems:
        raise ConfigError(problems)
    cls = OPTIMIZERS.get(spec.type)
    try:
        optimizer = cls(**{**optimizer_args(spec), **overrides})
    except Exception as exc:  # as in make_layer: whatever the constructor raises comes from the arguments
        raise ConfigError([Problem(f"{cls.__name__}: {_first_line(exc)}", path)]) from None
    names = excluded_from_decay(spec)
    if names:
        optimizer.exclude_from_weight_decay(var_names=names)
    return optimizer


def _exclusion_problems(spec: OptimizerSpec, cls: type, path: str) -> list[Problem]:
    """`exclude_from_weight_decay` is a list of name parts, and there is a weight decay to exclude from."""
    import inspect
    import re

    if "exclude_from_weight_decay" not in spec.args:
        return []
    names = spec.args["exclude_from_weight_decay"]
    where = f"{path}.exclude_from_weight_decay"
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n for n in names):
        return [Problem(f"expected a list of parts of variable names, e.g. [bias, gamma, beta], got {names!r}", where)]
    for name in names:
        try:
            re.compile(name)  # Keras searches the names with these joined as one regular expression
        except re.error as exc:
            return [Problem(f"`{name}` is not a regular expression Keras can search names with: {exc}", where)]
    default = inspect.signature(cls).parameters.get("weight_decay")
    decay = spec.args.get("weight_decay", default.default if default is not None else None)
    if not decay:
        return [
            Problem(
                f"{cls.__name__} has no weight decay to exclude variables from; set weight_decay "
                "(e.g. 0.05) or remove exclude_from_weight_decay",
                where,
            )
        ]
    return []


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _keras_schedules() -> dict[str, Any]:
    import keras

    s = keras.optimizers.schedules
    table = {
        "exponential": s.ExponentialDecay,
        "step": s.PiecewiseConstantDecay,
        "cosine": s.CosineDecay,
        "cosine_restarts": s.CosineDecayRestarts,
        "inverse_time": s.InverseTimeDecay,
        "polynomial": s.PolynomialDecay,
        "reduce_on_plateau": keras.callbacks.ReduceLROnPlateau,
    }
    for cls in list(table.values()):  # the Keras class names work too
        table[cls.__name__] = cls
    return table


SCHEDULES: Registry[Any] = Registry("learning-rate schedule", loader=_keras_schedules)
_SCHEDULE_KEYS = ("every",)  # ours: whether decay_steps / boundaries count epochs or steps


def list_schedules() -> list[str]:
    """Learning-rate schedules a config may name."""
    return [n for n in SCHEDULES.names() if not n[0].isupper()]


def _keras_losses() -> dict[str, type]:
    import keras

    table = {
        n: getattr(keras.losses, n)
        for n in dir(keras.losses)
        if isinstance(getattr(keras.losses, n), type)
        and issubclass(getattr(keras.losses, n), keras.losses.Loss)
        and n not in _NOT_CLASSIFICATION_LOSSES
    }
    # The snake_case names (categorical_crossentropy) find the classes through `normalize`; the short ones:
    table.update({alias: table[real] for alias, real in _LOSS_ALIASES.items()})
    return table


_NOT_CLASSIFICATION_LOSSES = ("Loss", "CTC", "Circle")  # sequences, metric learning: not image classifiers
_LOSS_ALIASES = {
    "mse": "MeanSquaredError",
    "mae": "MeanAbsoluteError",
    "mape": "MeanAbsolutePercentageError",
    "msle": "MeanSquaredLogarithmicError",
    "kld": "KLDivergence",
}
# Losses that take the class index; every other loss compares the prediction with a one-hot vector.
_INDEX_LOSSES = ("SparseCategoricalCrossentropy", "CategoricalGeneralizedCrossEntropy")

LOSSES: Registry[type] = Registry("loss", loader=_keras_losses)


def loss_spec(loss: str | LossSpec) -> tuple[str, dict[str, Any]]:
    """`train.loss` as (type, arguments): a name, or a mapping with `type` and the class's arguments."""
    return (loss, {}) if isinstance(loss, str) else (loss.type, loss.args)


def loss_problems(loss: str | LossSpec, path: str = "train.loss") -> list[Problem]:
    """Problems with `train.loss`: an unknown name or arguments the loss does not take."""
    name, args = loss_spec(loss)
    cls = LOSSES.get(name) if name in LOSSES else None
    if cls is None:
        snake_names = sorted({snake(c.__name__) for c in LOSSES._table().values()})
        return [
            Problem(
                f"unknown loss `{name}`{did_you_mean(name, snake_names + LOSSES.names())}; "
                f"valid: {', '.join(snake_names)}",
                path if isinstance(loss, str) else f"{path}.type",
            )
        ]
    if "reduction" in args:
        return [
            Problem(
                "the training step averages the loss of each example over the global batch; remove `reduction`",
                f"{path}.reduction",
            )
        ]
    return check_args(args, cls, cls.__name__, path, given=("name", "reduction")) or _construct(
        cls, {**args, "reduction": None}, path
    )


class ClassIndexLoss:
    """A Keras loss fed the class indices the data holds: one-hot first for a loss that compares vectors.

    It takes soft targets too, one float per class summing to 1 (the labels MixUp and CutMix mix):
    a loss that compares vectors gets them as they are; a loss of class indices gets its counterpart
    on vectors (`_SOFT_COUNTERPARTS`). Label smoothing, the loss's own argument, applies to both.
    Returns one value per example (the training step averages them over the global batch).
    """

    def __init__(self, loss):
        name, args = loss_spec(loss)
        cls = LOSSES.get(name)
        self.loss = cls(**args, reduction=None)
        self.one_hot = cls.__name__ not in _INDEX_LOSSES
        self.soft = self.loss if self.one_hot else _SOFT_COUNTERPARTS[cls.__name__](**args)
        # Keras's hinge losses turn {0, 1} targets into {-1, 1} only when the whole batch is {0, 1}:
        # soft targets are turned here, row by row, or a mixed batch would read its one-hot rows as {0, 1}.
        self.signed = cls.__name__ in _SIGNED_TARGET_LOSSES
        self.__name__ = self.name = snake(cls.__name__)

    def __call__(self, y_true: Any, y_pred: Any) -> Any:
        """Per-example losses against probabilities `y_pred` of `y_true`: class indices (integers),
        or soft targets (floats, one per class)."""
        from keras import backend, ops

        if backend.is_float_dtype(backend.standardize_dtype(y_true.dtype)):
            y_true = ops.cast(y_true, y_pred.dtype)
            return self.soft(2.0 * y_true - 1.0 if self.signed else y_true, y_pred)
        if self.one_hot:
            y_true = ops.one_hot(
                ops.reshape(ops.cast(y_true, "int32"), (-1,)), int(y_pred.shape[-1]), dtype=y_pred.dtype
            )
        return self.loss(y_true, y_pred)


_SIGNED_TARGET_LOSSES = ("Hinge", "SquaredHinge")  # they compare the prediction with -1/1 targets


def _soft_crossentropy(from_logits: bool = False, ignore_class: int | None = None, axis: int = -1, **_: Any) -> Any:
    """SparseCategoricalCrossentropy on soft targets: CategoricalCrossentropy, which is the expected
    sparse loss under the target's class weights; `ignore_class`'s weight counts for nothing, as the
    sparse loss gives its examples 0."""
    import keras
    from keras import ops

    loss = keras.losses.CategoricalCrossentropy(from_logits=from_logits, axis=axis, reduction=None)
    if ignore_class is None:
        return loss

    def ignoring(y_true: Any, y_pred: Any) -> Any:
        kept = 1.0 - ops.one_hot(ignore_class, int(y_pred.shape[-1]), dtype=y_true.dtype)  # zeros off the classes
        return loss(y_true * kept, y_pred)

    return ignoring


def _soft_generalized_crossentropy(q: float = 0.5, **_: Any) -> Any:
    """CategoricalGeneralizedCrossEntropy on soft targets: the expected loss under the target's class
    weights, sum_k t_k (1 - p_k^q) / q (Keras's takes class indices only)."""
    from keras import ops

    def expected(y_true: Any, y_pred: Any) -> Any:
        # p^q only where the target has weight: a class with none and p = 0 would give 0·∞ = NaN gradients
        p = ops.where(y_true > 0, y_pred, ops.ones_like(y_pred))
        return ops.sum(y_true * (1.0 - ops.power(p, q)) / q, axis=-1)

    return expected


# The form on soft targets of each loss that takes class indices, built from the loss's own arguments.
_SOFT_COUNTERPARTS = {
    "SparseCategoricalCrossentropy": _soft_crossentropy,
    "CategoricalGeneralizedCrossEntropy": _soft_generalized_crossentropy,
}


def make_loss(loss: str | LossSpec) -> ClassIndexLoss:
    """The loss `train.loss` names, taking class indices whatever the loss."""
    return ClassIndexLoss(loss)


def compile_args(loss: Any, metrics: list[str]) -> dict[str, Any]:
    """`model.compile`'s loss and metrics as Keras's own classes, so that model.keras loads compiled
    in plain Keras (`keras.saving.load_model`), with nothing of cnncli imported.

    The training step feeds class indices through `ClassIndexLoss`, which Keras cannot rebuild; a
    Keras user feeds labels in the form the loss class itself takes: class indices for the sparse
    losses, one-hot vectors for the others (`keras.utils.to_categorical`). The metrics follow.
    """
    import keras

    name, args = loss_spec(loss)
    cls = LOSSES.get(name)
    one_hot = cls.__name__ not in _INDEX_LOSSES
    compiled = []
    for metric in metrics:
        if one_hot and metric in ("accuracy", "acc"):
            compiled.append(keras.metrics.CategoricalAccuracy(name="accuracy"))
        elif one_hot and metric in ("top_5_accuracy", "top5", "top_k_accuracy"):
            compiled.append(keras.metrics.TopKCategoricalAccuracy(k=5, name="top_5_accuracy"))
        else:
            compiled.append(make_metric(metric, loss))
    return {"loss": cls(**args), "metrics": compiled}


def make_metric(name: str, loss: Any = None) -> Any:
    """A metric by name; `accuracy` compares class indices, the form of every label cnncli feeds."""
    import keras

    if name in ("accuracy", "acc"):
        return keras.metrics.SparseCategoricalAccuracy(name="accuracy")
    if name in ("top_5_accuracy", "top5", "top_k_accuracy"):
        return keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top_5_accuracy")
    metric = keras.metrics.get(name)
    return metric if isinstance(metric, keras.metrics.Metric) else keras.metrics.MeanMetricWrapper(metric, name=name)


def optimizer_problems(spec: OptimizerSpec, path: str, construct: bool = True) -> list[Problem]:
    """Problems with an optimizer spec: its name, its arguments, and (`construct`) whether Keras builds it."""
    cls, found = resolve(OPTIMIZERS, spec.type, f"{path}.type")
    if found:
        return found
    problems = check_args(spec.args, cls, cls.__name__, path, extra=_OPTIMIZER_KEYS)
    problems = problems or _exclusion_problems(spec, cls, path)
    return problems or (_construct(cls, optimizer_args(spec), path) if construct else [])


def schedule_problems(spec: ScheduleSpec, path: str = "train.lr_schedule") -> list[Problem]:
    """Problems with a learning-rate schedule spec: its name, its arguments, and whether Keras builds it."""
    cls, found = resolve(SCHEDULES, spec.type, f"{path}.type")
    return found or check_args(spec.args, cls, cls.__name__, path) or _construct(cls, spec.args, path)


def _construct(cls, args: dict, path: str) -> list[Problem]:
    """What the constructor itself refuses in arguments that passed the signature checks."""
    try:
        cls(**args)
    except Exception as exc:  # Keras raises ValueError mostly, TypeError for some: all come from the arguments
        return [Problem(f"{cls.__name__}: {keras_message(exc)}", path)]
    return []


def check_train_specs(cfg: Config) -> list[Problem]:
    """Unknown optimizers, schedules, losses and metrics, with their arguments."""
    problems: list[Problem] = []
    opt_specs = [("train.optimizer", cfg.train.optimizer)]
    opt_specs += [
        (f"train.phases[{i}].optimizer", p.optimizer)
        for i, p in enumerate(cfg.train.phases or [])
        if p.optimizer is not None
    ]
    for path, spec in opt_specs:
        problems += optimizer_problems(spec, path)
    if cfg.train.lr_schedule is not None:
        problems += schedule_problems(cfg.train.lr_schedule)
    problems += loss_problems(cfg.train.loss)
    names = ["loss"]
    for i, name in enumerate(cfg.train.metrics):
        try:
            names.append(make_metric(name, cfg.train.loss).name)
        except (ValueError, TypeError):
            problems.append(
                Problem(f"unknown metric `{name}`; e.g. accuracy, top_5_accuracy, auc", f"train.metrics[{i}]")
            )
    monitors = names + [f"val_{n}" for n in names]
    for path, watcher in (
        ("train.early_stopping.monitor", cfg.train.early_stopping),
        ("train.checkpoint.monitor", cfg.train.checkpoint),
    ):
        if watcher is not None and watcher.monitor not in monitors:
            problems.append(
                Problem(
                    f"cannot monitor `{watcher.monitor}`{did_you_mean(watcher.monitor, monitors)}; "
                    f"the run logs: {', '.join(monitors)}",
                    path,
                )
            )
    return problems
