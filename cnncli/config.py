"""The config schema: YAML in, a validated `Config` out, every problem at once.

Keys are Keras's own argument names. Layer, optimizer, schedule and backbone
entries carry a `type` (or `name`) plus free keyword arguments, which are
checked against the Keras class's signature by `cnncli.layers`, where Keras
is imported; this module stays import-light so `cnn --help` is instant.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cnncli.errors import ConfigError, Problem, did_you_mean
from cnncli.yamlio import KeyPath, format_path, parse_yaml

DATASETS = ("shapes", "mnist", "fashion_mnist", "cifar10", "cifar100", "idx", "npz", "image_folder",
            "records")  # records: TFRecord shards written by `cnn data pack`
FILE_DATASETS = ("idx", "npz", "image_folder", "records")  # these need `data.path`
SHAPE_CLASSES = ("x", "o", "square", "triangle", "plus", "line")


class Strict(BaseModel):
    """Unknown keys are errors; the whole tree is validated in one pass."""

    model_config = ConfigDict(extra="forbid")


class WithArgs(BaseModel):
    """A Keras class chosen by `type`, with the rest of the keys as its arguments."""

    model_config = ConfigDict(extra="allow")

    type: str

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LayerSpec(WithArgs):
    name: Optional[str] = None  # stable name; other layers refer to it in `inputs`
    inputs: Optional[list[str]] = None  # named layers feeding this one (graph models)


class OptimizerSpec(WithArgs):
    type: str = "Adam"


class LossSpec(WithArgs):
    """A keras.losses class with arguments, e.g. {type: SparseCategoricalCrossentropy, from_logits: true}."""


class ScheduleSpec(WithArgs):
    every: Literal["epoch", "step"] = "epoch"  # unit of decay_steps / boundaries; the classic decay is per epoch


class BackboneSpec(BaseModel):
    """The pretrained base: a keras.applications model (`name`) or a model you trained (`from_run`).

    With `name`, extra keys go to the application's constructor. With `from_run`,
    the earlier run's layers up to and including `layers_until` become the base;
    by default everything before its last Dense layer (its classifier) and the
    Dropout in front of it.
    """

    model_config = ConfigDict(extra="allow")

    name: Optional[str] = None  # a keras.applications model, e.g. VGG16
    from_run: Optional[str] = None  # a cnncli run directory whose model.keras provides the layers
    layers_until: Optional[str] = None  # from_run: the last layer kept (a top-level layer name of that model)
    weights: Optional[str] = "imagenet"  # imagenet | null | path to a weights file (name only)
    trainable: bool = False  # frozen base is the first step of transfer learning
    include_top: bool = False  # the YAML `layers` become the head
    pooling: Optional[Literal["avg", "max"]] = None  # global pooling of the base's last feature map

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _one_source(self) -> "BackboneSpec":
        if (self.name is None) == (self.from_run is None):
            raise ValueError("give exactly one of `name` (a keras.applications model, e.g. VGG16) "
                             "or `from_run` (a run directory of a model you trained)")
        if self.name is not None and self.layers_until is not None:
            raise ValueError("`layers_until` goes with `from_run`; a keras.applications backbone is cut "
                             "with `include_top` and `pooling`")
        if self.from_run is not None:
            extra = [k for k in ("weights", "include_top") if k in self.model_fields_set] + list(self.args)
            if extra:
                raise ValueError(f"with `from_run` the layers and weights come from that run; "
                                 f"remove {', '.join(f'`{k}`' for k in extra)}")
        return self


class ShapesSpec(Strict):
    """The built-in synthetic figures (`dataset: shapes`)."""

    image_size: int = Field(32, ge=8, le=512)  # side in pixels
    classes: list[str] = Field(default_factory=lambda: list(SHAPE_CLASSES), min_length=2)
    train_examples: int = Field(6000, ge=1)
    test_examples: int = Field(1000, ge=1)
    noise: float = Field(0.1, ge=0, le=1)  # std of additive pixel noise, in [0, 1] units

    @field_validator("classes")
    @classmethod
    def _known_classes(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in SHAPE_CLASSES:
                raise ValueError(f"unknown figure `{name}`{did_you_mean(name, SHAPE_CLASSES)}; "
                                 f"valid: {', '.join(SHAPE_CLASSES)}")
        if len(set(value)) != len(value):
            raise ValueError("figures are listed more than once")
        return value


class DataConfig(Strict):
    dataset: str = "shapes"
    path: Optional[str] = None  # folder or file for idx / npz / image_folder; offline copy of a Keras dataset
    validation_split: float = Field(0.1, ge=0, lt=1)  # carved from the training split, deterministically
    image_size: Optional[tuple[int, int]] = None  # resize to [height, width]
    color_mode: Optional[Literal["grayscale", "rgb"]] = None
    augment: list[LayerSpec] = Field(default_factory=list)  # Keras preprocessing layers, training only
    limit: Optional[int] = Field(None, ge=1)  # cap on examples per split, for quick runs
    shapes: ShapesSpec = Field(default_factory=ShapesSpec)
    on_corrupt: Literal["error", "skip"] = "error"  # a corrupt image stops the run unless told to skip
    follow_symlinks: bool = False  # image_folder links leaving the folder are not followed by default
    # Where decoded images live while training (cnncli/data/pipeline.py): `memory` decodes every split up
    # front and keeps it resident (fastest per step); `disk` streams from the files through a cache of
    # decoded images written once; `none` decodes every epoch; `auto` keeps data resident when the decoded
    # training split fits data.memory_budget and streams with a disk cache otherwise.
    cache: Literal["auto", "memory", "disk", "none"] = "auto"  # resident, streamed with a decoded cache, or not
    cache_dir: Optional[str] = None  # the disk cache; default $XDG_CACHE_HOME/cnncli or ~/.cache/cnncli
    memory_budget: Optional[Union[int, str]] = None  # bytes, or "512MB", "4GB"; default 25% of available RAM

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        key = value.lower().replace("-", "_")
        if key not in DATASETS:
            raise ValueError(f"unknown dataset `{value}`{did_you_mean(value, DATASETS)}; "
                             f"valid: {', '.join(DATASETS)}")
        return key

    @field_validator("memory_budget")
    @classmethod
    def _bytes(cls, value):
        if value is None or isinstance(value, int):
            if value is not None and value < 1:
                raise ValueError(f"a memory budget must be positive, got {value}")
            return value
        import re

        found = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
        if not found or not found.group(1).replace(".", "", 1).isdigit() or float(found.group(1)) <= 0:
            raise ValueError(f"expected bytes or a size such as 512MB or 4GB, got `{value}`")
        return int(float(found.group(1)) * 1024 ** "_KMGT".index(found.group(2).upper() or "_"))

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, value):
        if value is not None and min(value) < 1:
            raise ValueError(f"sizes must be positive, got {list(value)}")
        return value


class ModelConfig(Strict):
    input_shape: Optional[list[int]] = None  # [h, w, channels]; inferred from the data when omitted
    backbone: Optional[BackboneSpec] = None
    layers: list[LayerSpec] = Field(default_factory=list)

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, value):
        if value is not None:
            if len(value) == 2:  # [height, width]: one grey channel, as MNIST-style data has
                value = [*value, 1]
            if len(value) != 3:
                raise ValueError(f"expected [height, width, channels] or [height, width], got {value}")
            if min(value) < 1:
                raise ValueError(f"sizes must be positive, got {value}")
        return value


class EarlyStopping(Strict):
    monitor: str = "val_loss"
    patience: int = Field(3, ge=0)
    min_delta: float = Field(0.0, ge=0)
    mode: Literal["auto", "min", "max"] = "auto"
    restore_best_weights: bool = True


class CheckpointSpec(Strict):
    monitor: str = "val_loss"  # which epoch is "best"
    mode: Literal["auto", "min", "max"] = "auto"
    save_best_only: bool = False  # true: model.keras holds the best epoch, not the last


class Phase(Strict):
    """One stage of transfer learning."""

    epochs: int = Field(ge=1)
    trainable: Union[Literal["head", "all"], list[str]] = "head"  # or backbone layer-name prefixes
    optimizer: Optional[OptimizerSpec] = None  # default: train.optimizer
    learning_rate: Optional[float] = Field(None, gt=0)
    layer_lr_decay: Optional[float] = Field(None, gt=0, le=1)  # rate multiplier per earlier block


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)  # global: split across replicas
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: Optional[ScheduleSpec] = None
    loss: Union[str, LossSpec] = "sparse_categorical_crossentropy"  # a name, or a mapping with arguments
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])
    early_stopping: Optional[EarlyStopping] = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    phases: Optional[list[Phase]] = Field(None, min_length=1)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_form(cls, value: Any) -> Any:
        """One message for a loss of the wrong form, rather than one per member of the union."""
        if isinstance(value, dict) and not isinstance(value.get("type"), str):
            raise ValueError("a loss written as a mapping needs `type`, e.g. "
                             "{type: SparseCategoricalCrossentropy, from_logits: true}")
        if not isinstance(value, (str, dict, LossSpec)):
            raise ValueError(f"expected a loss name or a mapping with `type` and the loss's arguments, "
                             f"got {_describe(value)}")
        return value


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    distribute: Optional[Literal["mirrored", "multi_worker", "tpu"]] = None
    cpu_devices: Optional[int] = Field(None, ge=1, le=64)  # logical CPU devices, for mirrored runs without GPUs
    jit_compile: bool = False  # XLA: slower on CPU, opt-in for GPU
    steps_per_execution: Optional[int] = Field(None, ge=1)  # None: a whole epoch per tf.function call
    intra_op_threads: Optional[int] = Field(None, ge=0)
    inter_op_threads: Optional[int] = Field(None, ge=0)
    collective_timeout: float = Field(30.0, gt=0)  # multi_worker: seconds without a heartbeat before a peer is lost


class Distribution(Strict):
    """One searched value of `search.params`: exactly one of the four kinds (Optuna's suggest_*)."""

    loguniform: Optional[tuple[float, float]] = None  # [low, high], sampled on a log scale: rates, decays
    uniform: Optional[tuple[float, float]] = None  # [low, high]
    int_: Optional[tuple[int, int]] = Field(None, alias="int")  # [low, high], both included
    choice: Optional[list[Any]] = Field(None, min_length=1)  # any YAML values, lists included
    step: Optional[float] = Field(None, gt=0)  # int and uniform only: the grid the values lie on

    @model_validator(mode="after")
    def _one_kind(self) -> "Distribution":
        kinds = [k for k in ("loguniform", "uniform", "int_", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of `loguniform: [lo, hi]`, `uniform: [lo, hi]`, "
                             "`int: [lo, hi]` or `choice: [a, b, ...]`")
        bounds = getattr(self, kinds[0])
        if kinds[0] != "choice" and not bounds[0] < bounds[1]:
            raise ValueError(f"the low bound must be below the high one, got {list(bounds)}")
        if kinds[0] == "loguniform" and bounds[0] <= 0:
            raise ValueError(f"loguniform bounds must be positive, got {list(bounds)}")
        if self.step is not None and kinds[0] not in ("int_", "uniform"):
            raise ValueError("`step` goes with `int` or `uniform`")
        if kinds[0] == "int_" and self.step is not None and self.step != int(self.step):
            raise ValueError(f"an `int` step is a whole number, got {self.step}")
        return self


class SearchSpec(Strict):
    """What `cnn tune` searches; `cnn train` ignores this section."""

    params: dict[str, Distribution] = Field(min_length=1)  # config path (as for --set) -> distribution
    trials: int = Field(20, ge=1)  # finished (complete, pruned or failed) trials the study runs to
    metric: str = "val_accuracy"  # a history.csv column, read at every epoch (pruning) and at the end
    direction: Optional[Literal["maximize", "minimize"]] = None  # default: minimize losses, maximize the rest
    sampler: Literal["tpe", "random", "grid"] = "tpe"  # how trials pick values; grid needs choice or int params
    pruner: Literal["median", "hyperband", "none"] = "median"  # stops a trial early when its metric lags
    timeout: Optional[float] = Field(None, gt=0)  # seconds; no new trial starts after it


class MlflowSpec(Strict):
    uri: str  # tracking URI: file:./mlruns, sqlite:///mlflow.db, http://host:5000
    experiment: str = "cnncli"  # MLflow experiment the runs are logged under


class TrackingSpec(Strict):
    """Experiment tracking; needs the optional extra: pip install 'cnncli[mlflow]'."""

    mlflow: Optional[MlflowSpec] = None  # {uri, experiment}: log runs and sweeps to MLflow


class Config(Strict):
    name: Optional[str] = None  # run name; defaults to the config file's stem
    seed: Optional[int] = Field(None, ge=0, lt=2**32)  # None: chosen at random and recorded
    deterministic: bool = False  # TF op determinism: identical histories for one seed
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    search: Optional[SearchSpec] = None  # hyperparameter sweep, run by `cnn tune`
    tracking: Optional[TrackingSpec] = None  # log runs to MLflow

    # Filled in by load_config: where each key came from, for later errors.
    _file: Optional[str] = None
    _lines: dict = {}
    _groups: dict = {}  # expanded layer name -> (block use, label) it came from (cnncli.blocks), for the summary

    def line_of(self, path: KeyPath) -> int | None:
        return _nearest_line(self._lines, path)

    def error(self, message: str, path: KeyPath | str) -> ConfigError:
        """A ConfigError pointing at `path` (a key path, or its text) in the file this config came from."""
        path = _parse_path(path) if isinstance(path, str) else path
        return ConfigError.single(message, format_path(path), self.line_of(path), self._file)

    def locate(self, problems: list[Problem], file: str | None = None) -> ConfigError:
        """A ConfigError for problems found in this config, each given the line of its key path."""
        for p in problems:
            if p.line is None and p.path:
                p.line = self.line_of(_parse_path(p.path))
        return ConfigError(problems, file or self._file)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json", by_alias=True)
        for key in ("search", "tracking"):  # optional sections: absent rather than null
            if data.get(key) is None:
                data.pop(key, None)
        for layer in data["model"]["layers"] + data["data"]["augment"]:
            for key in ("name", "inputs"):  # unset graph keys are noise in a resolved config
                if layer.get(key) is None:
                    layer.pop(key, None)
        backbone = data["model"].get("backbone")
        if backbone:  # only the keys of its kind: a from_run backbone refuses weights / include_top
            unused = ("name", "weights", "include_top") if backbone.get("from_run") else ("from_run", "layers_until")
            for key in unused:
                backbone.pop(key, None)
        if data["train"].get("phases"):  # epochs are per phase; a top-level value would fail validation on resume
            data["train"].pop("epochs", None)
        return data

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.train.phases) if self.train.phases else self.train.epochs


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
                problems.append(Problem(f"input `{ref}` is not a layer named earlier{hint}",
                                        f"model.layers[{i}].inputs"))
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
        problems.append(Problem("with `train.phases`, epochs are given per phase; remove `train.epochs`",
                                "train.epochs"))
    for i, phase in enumerate(cfg.train.phases):
        if isinstance(phase.trainable, list) and not phase.trainable:
            problems.append(Problem("an empty list trains nothing but the head; write `trainable: head`",
                                    f"train.phases[{i}].trainable"))
        if phase.layer_lr_decay is not None and phase.trainable == "head":
            problems.append(Problem("layer_lr_decay scales the rates of backbone blocks, but this phase trains "
                                    "only the head; unfreeze blocks (`trainable: [block5]` or `all`) or remove it",
                                    f"train.phases[{i}].layer_lr_decay"))
    return problems


def _check_validation_monitors(cfg: Config) -> list[Problem]:
    if cfg.data.validation_split > 0:
        return []
    problems = []
    if cfg.train.early_stopping and cfg.train.early_stopping.monitor.startswith("val_"):
        problems.append(Problem(f"monitors `{cfg.train.early_stopping.monitor}` but data.validation_split is 0",
                                "train.early_stopping.monitor"))
    if cfg.train.checkpoint.save_best_only and cfg.train.checkpoint.monitor.startswith("val_"):
        problems.append(Problem(f"monitors `{cfg.train.checkpoint.monitor}` but data.validation_split is 0",
                                "train.checkpoint.monitor"))
    return problems


CROSS_CHECKS = (_check_path_needed, _check_layers_present, _check_graph_names, _check_phases,
                _check_validation_monitors)


# ---------------------------------------------------------------- loading

def _nearest_line(lines: dict, path: KeyPath) -> int | None:
    path = tuple(path)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return lines.get(())


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


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _pydantic_step(part: Any) -> bool:
    """False for pydantic's own location markers (`list[int]`, `function-after[...]`), not keys of the file."""
    # markers are a bare word with brackets (`tuple[float, float]`); a dotted key (`model.layers[0].filters`,
    # a search path) is the user's
    return not (isinstance(part, str) and (re.fullmatch(r"[\w-]+\[.*\]", part) or part.startswith("function-")))


def _problem_from_pydantic(err: dict) -> Problem:
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
        message = f"{err['msg'][0].lower()}{err['msg'][1:]}, got {_describe(err.get('input'))}"
    return Problem(message, format_path(loc), None)


def validate_data(data: Any, lines: dict | None = None, file: str | None = None,
                  default_name: str | None = None,
                  spec_check: Callable[[Any], list[Problem]] | None = None) -> Config:
    """Turn parsed YAML into a Config, or raise a ConfigError listing every problem.

    `spec_check` (e.g. `cnncli.builder.raw_spec_problems`) adds layer-type and
    argument problems, which need Keras, to a failing report; this module does not import Keras.
    """
    lines = lines or {}
    if data is None:
        raise ConfigError.single("the file is empty; a config needs at least `model.layers`", file=file)
    if not isinstance(data, dict):
        raise ConfigError.single(f"the top level must be a mapping of keys, got a {type(data).__name__}",
                                 line=lines.get(()), file=file)
    try:
        cfg = Config.model_validate(data)
    except ValidationError as exc:
        problems = [_problem_from_pydantic(e) for e in exc.errors()]
        for p, e in zip(problems, exc.errors()):
            p.line = _nearest_line(lines, tuple(x for x in e["loc"] if isinstance(x, (str, int))))
        raise ConfigError(_with_spec_problems(problems, data, lines, spec_check), file) from None
    problems = [p for check in CROSS_CHECKS for p in check(cfg)]
    for p in problems:
        p.line = _nearest_line(lines, _parse_path(p.path))
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
            path = _parse_path(key, strict=True)
            message = _schema_step_problem(cfg, path) if path else "is empty"
        except ValueError as exc:
            message = str(exc)
        if message:
            problems.append(Problem(message, format_path(where[:2]) + f".{key}", _nearest_line(lines, where)))
    if cfg.search.sampler == "grid":
        for key, dist in cfg.search.params.items():
            if dist.choice is None and dist.int_ is None:
                problems.append(Problem("the grid sampler needs `choice` or `int` values",
                                        f"search.params.{key}", _nearest_line(lines, ("search", "params", key))))
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


def _with_spec_problems(problems: list[Problem], data: Any, lines: dict,
                        spec_check: Callable[[Any], list[Problem]] | None) -> list[Problem]:
    """`problems` plus those `spec_check` finds in the raw data, ordered by line."""
    extra = spec_check(data) if spec_check else []
    for p in extra:
        p.line = _nearest_line(lines, _parse_path(p.path))
    return sorted(problems + extra, key=lambda p: p.line or 0)


def _parse_path(text: str, strict: bool = False) -> KeyPath:
    """"model.layers[2].kernel_size" -> ("model", "layers", 2, "kernel_size").

    `strict` (for --set) refuses a `[...]` that is not an index; otherwise, as for the
    paths of problems, it stays part of the key (a config may hold any key, `[` included).
    """
    out: list[Any] = []
    for part in text.split("."):
        while "[" in part:
            head, _, rest = part.partition("[")
            index, _, tail = rest.partition("]")
            if not index.strip().lstrip("-").isdigit():
                if strict:
                    raise ValueError(f"`[{index}]` is not a list index")
                break
            if head:
                out.append(head)
            out.append(int(index))
            part = tail
        if part:
            out.append(part)
    return tuple(out)


def canonical_path(text: str) -> str:
    """A --set or search path as problems name it: `model.layers[0].filters`."""
    return format_path(_parse_path(text, strict=True))


def apply_overrides(data: dict, overrides: list[str], lines: dict) -> None:
    """Apply `key.path=value` overrides in place; values are YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        try:
            path = _parse_path(key.strip(), strict=True)
            if not sep or not path:
                raise ValueError("expected key.path=value")
            value, _ = parse_yaml(raw)
        except (ValueError, ConfigError) as exc:
            raise ConfigError.single(f"bad --set `{item}`: {exc}") from None
        node = data
        for i, step in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(step, int):
                if not isinstance(node, list) or not -len(node) <= step < len(node):
                    raise ConfigError.single(f"bad --set `{item}`: no list item {format_path(path[:i + 1])}")
                node = node[step]
                continue
            if not isinstance(node, dict):
                raise ConfigError.single(f"bad --set `{item}`: {format_path(path[:i])} is not a mapping")
            if node.get(step) is None:
                node[step] = [] if isinstance(nxt, int) else {}
                lines[path[:i + 1]] = 0  # created by the override: errors below it point at --set, not line 1
            node = node[step]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or not -len(node) <= last < len(node):
                raise ConfigError.single(f"bad --set `{item}`: no list item {format_path(path)}")
        elif not isinstance(node, dict):
            raise ConfigError.single(f"bad --set `{item}`: {format_path(path[:-1])} is not a mapping")
        node[last] = value
        lines[path] = 0  # line 0 marks "from the command line"


def load_config(path: str | Path | list, overrides: list[str] | None = None,
                spec_check: Callable[[Any], list[Problem]] | None = None) -> Config:
    """Read, override and validate a config file, or several merged left to right (`spec_check`: see
    `validate_data`). `extends` chains are followed and `model.blocks` expanded before the schema sees
    the tree (cnncli/compose.py, cnncli/blocks.py)."""
    from cnncli import blocks, compose

    data, lines, shown = compose.read_config_files(path)
    if overrides:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError.single("the top level must be a mapping of keys", file=shown)
        apply_overrides(data, overrides, lines)
    groups = blocks.expand_blocks(data, lines)
    cfg = validate_data(data, lines, shown, default_name=Path(shown).stem, spec_check=spec_check)
    cfg._groups = groups
    return cfg


def config_from_dict(data: dict, name: str = "config") -> Config:
    """Validate an in-memory config (tests, resumed runs)."""
    return validate_data(data, {}, None, default_name=name)
