"""The config schema: every key, its type and default, as pydantic models (`Config` at the top).

Reading a file into it (YAML with lines, overrides, the checks across fields,
every problem at once) is cnncli/loading.py.

Keys are Keras's own argument names. Layer, optimizer, schedule and backbone
entries carry a `type` (or `name`) plus free keyword arguments, which are
checked against the Keras class's signature by `cnncli.config.vocabulary`, where Keras
is imported; this module stays import-light so `cnn --help` is instant.
"""

from __future__ import annotations

import re
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cnncli.config.keypaths import nearest_line, parse_path
from cnncli.config.yamlio import KeyPath, format_path
from cnncli.errors import ConfigError, Problem, describe, did_you_mean

DATASETS = (
    "shapes",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar100",
    "idx",
    "npz",
    "image_folder",
    "records",
)  # records: TFRecord shards written by `cnn data pack`
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
        """The Keras arguments: every key besides `type` (and `name`, `inputs`)."""
        return dict(self.model_extra or {})


class LayerSpec(WithArgs):
    name: str | None = None  # stable name; other layers refer to it in `inputs`
    inputs: list[str] | None = None  # named layers feeding this one (graph models)


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

    name: str | None = None  # a keras.applications model, e.g. VGG16
    from_run: str | None = None  # a cnncli run directory whose model.keras provides the layers
    layers_until: str | None = None  # from_run: the last layer kept (a top-level layer name of that model)
    weights: str | None = "imagenet"  # imagenet | null | path to a weights file (name only)
    trainable: bool = False  # frozen base is the first step of transfer learning
    include_top: bool = False  # the YAML `layers` become the head
    pooling: Literal["avg", "max"] | None = None  # global pooling of the base's last feature map

    @property
    def args(self) -> dict[str, Any]:
        """The extra keys, passed on to the application's constructor."""
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if (self.name is None) == (self.from_run is None):
            raise ValueError(
                "give exactly one of `name` (a keras.applications model, e.g. VGG16) "
                "or `from_run` (a run directory of a model you trained)"
            )
        if self.name is not None and self.layers_until is not None:
            raise ValueError(
                "`layers_until` goes with `from_run`; a keras.applications backbone is cut "
                "with `include_top` and `pooling`"
            )
        if self.from_run is not None:
            extra = [k for k in ("weights", "include_top") if k in self.model_fields_set] + list(self.args)
            if extra:
                raise ValueError(
                    f"with `from_run` the layers and weights come from that run; "
                    f"remove {', '.join(f'`{k}`' for k in extra)}"
                )
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
                raise ValueError(
                    f"unknown figure `{name}`{did_you_mean(name, SHAPE_CLASSES)}; valid: {', '.join(SHAPE_CLASSES)}"
                )
        if len(set(value)) != len(value):
            raise ValueError("figures are listed more than once")
        return value


class DataConfig(Strict):
    dataset: str = "shapes"
    path: str | None = None  # folder or file for idx / npz / image_folder; offline copy of a Keras dataset
    validation_split: float = Field(0.1, ge=0, lt=1)  # carved from the training split, deterministically
    image_size: tuple[int, int] | None = None  # resize to [height, width]
    color_mode: Literal["grayscale", "rgb"] | None = None
    augment: list[LayerSpec] = Field(default_factory=list)  # Keras preprocessing layers, training only
    limit: int | None = Field(None, ge=1)  # cap on examples per split, for quick runs
    shapes: ShapesSpec = Field(default_factory=ShapesSpec)
    on_corrupt: Literal["error", "skip"] = "error"  # a corrupt image stops the run unless told to skip
    follow_symlinks: bool = False  # image_folder links leaving the folder are not followed by default
    # Where decoded images live while training (cnncli/data/pipeline.py): `memory` decodes every split up
    # front and keeps it resident (fastest per step); `disk` streams from the files through a cache of
    # decoded images written once; `none` decodes every epoch; `auto` keeps data resident when the decoded
    # training split fits data.memory_budget and streams with a disk cache otherwise.
    cache: Literal["auto", "memory", "disk", "none"] = "auto"  # resident, streamed with a decoded cache, or not
    cache_dir: str | None = None  # the disk cache; default $XDG_CACHE_HOME/cnncli or ~/.cache/cnncli
    memory_budget: int | str | None = None  # bytes, or "512MB", "4GB"; default 25% of available RAM

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        key = value.lower().replace("-", "_")
        if key not in DATASETS:
            raise ValueError(f"unknown dataset `{value}`{did_you_mean(value, DATASETS)}; valid: {', '.join(DATASETS)}")
        return key

    @field_validator("memory_budget")
    @classmethod
    def _bytes(cls, value):
        if value is None or isinstance(value, int):
            if value is not None and value < 1:
                raise ValueError(f"a memory budget must be positive, got {value}")
            return value
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
    input_shape: list[int] | None = None  # [h, w, channels]; inferred from the data when omitted
    backbone: BackboneSpec | None = None
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
    trainable: Literal["head", "all"] | list[str] = "head"  # or backbone layer-name prefixes
    optimizer: OptimizerSpec | None = None  # default: train.optimizer
    learning_rate: float | None = Field(None, gt=0)
    layer_lr_decay: float | None = Field(None, gt=0, le=1)  # rate multiplier per earlier block


class TrainConfig(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)  # global: split across replicas
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    lr_schedule: ScheduleSpec | None = None
    loss: str | LossSpec = "sparse_categorical_crossentropy"  # a name, or a mapping with arguments
    metrics: list[str] = Field(default_factory=lambda: ["accuracy"])
    early_stopping: EarlyStopping | None = None
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    phases: list[Phase] | None = Field(None, min_length=1)

    @field_validator("loss", mode="before")
    @classmethod
    def _loss_form(cls, value: Any) -> Any:
        """One message for a loss of the wrong form, rather than one per member of the union."""
        if isinstance(value, dict) and not isinstance(value.get("type"), str):
            raise ValueError(
                "a loss written as a mapping needs `type`, e.g. "
                "{type: SparseCategoricalCrossentropy, from_logits: true}"
            )
        if not isinstance(value, (str, dict, LossSpec)):
            raise ValueError(
                f"expected a loss name or a mapping with `type` and the loss's arguments, got {describe(value)}"
            )
        return value


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "gpu"] = "auto"
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    distribute: Literal["mirrored", "multi_worker", "tpu"] | None = None
    cpu_devices: int | None = Field(None, ge=1, le=64)  # logical CPU devices, for mirrored runs without GPUs
    jit_compile: bool = False  # XLA: slower on CPU, opt-in for GPU
    steps_per_execution: int | None = Field(None, ge=1)  # None: a whole epoch per tf.function call
    intra_op_threads: int | None = Field(None, ge=0)
    inter_op_threads: int | None = Field(None, ge=0)
    collective_timeout: float = Field(30.0, gt=0)  # multi_worker: seconds without a heartbeat before a peer is lost
    cluster_timeout: float = Field(300.0, gt=0)  # multi_worker: seconds to wait at the start for the other workers


DEVICES = typing.get_args(RuntimeConfig.model_fields["device"].annotation)  # what `cnn train --device` takes


class Distribution(Strict):
    """One searched value of `search.params`: exactly one of the four kinds (Optuna's suggest_*)."""

    loguniform: tuple[float, float] | None = None  # [low, high], sampled on a log scale: rates, decays
    uniform: tuple[float, float] | None = None  # [low, high]
    int_: tuple[int, int] | None = Field(None, alias="int")  # [low, high], both included
    choice: list[Any] | None = Field(None, min_length=1)  # any YAML values, lists included
    step: float | None = Field(None, gt=0)  # int and uniform only: the grid the values lie on

    @model_validator(mode="after")
    def _one_kind(self) -> Distribution:
        kinds = [k for k in ("loguniform", "uniform", "int_", "choice") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of `loguniform: [lo, hi]`, `uniform: [lo, hi]`, "
                "`int: [lo, hi]` or `choice: [a, b, ...]`"
            )
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
    direction: Literal["maximize", "minimize"] | None = None  # default: minimize losses, maximize the rest
    sampler: Literal["tpe", "random", "grid"] = "tpe"  # how trials pick values; grid needs choice or int params
    pruner: Literal["median", "hyperband", "none"] = "median"  # stops a trial early when its metric lags
    timeout: float | None = Field(None, gt=0)  # seconds; no new trial starts after it


class MlflowSpec(Strict):
    uri: str  # tracking URI: file:./mlruns, sqlite:///mlflow.db, http://host:5000
    experiment: str = "cnncli"  # MLflow experiment the runs are logged under


class TrackingSpec(Strict):
    """Experiment tracking; needs the optional extra: pip install 'cnncli[mlflow]'."""

    mlflow: MlflowSpec | None = None  # {uri, experiment}: log runs and sweeps to MLflow


class EvaluateConfig(Strict):
    """How a trained model is scored on the test split (`cnn train`'s metrics.json, `cnn evaluate`)."""

    tta: Literal["none", "flip"] = "none"  # flip: also score the mean prediction of each image and its mirror image


TTA_MODES = typing.get_args(EvaluateConfig.model_fields["tta"].annotation)  # what `cnn evaluate --tta` takes


class Config(Strict):
    name: str | None = None  # run name; defaults to the config file's stem
    seed: int | None = Field(None, ge=0, lt=2**32)  # None: chosen at random and recorded
    deterministic: bool = False  # TF op determinism: identical histories for one seed
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)  # test-time augmentation of the test scores
    search: SearchSpec | None = None  # hyperparameter sweep, run by `cnn tune`
    tracking: TrackingSpec | None = None  # log runs to MLflow

    # Filled in by load_config: where each key came from, for later errors.
    _file: str | None = None
    _lines: dict = {}
    _groups: dict = {}  # expanded layer name -> (block use, label) it came from (cnncli.config.blocks), for the summary

    def line_of(self, path: KeyPath) -> int | None:
        """The line `path` was written on in the config file, or None."""
        return nearest_line(self._lines, path)

    def error(self, message: str, path: KeyPath | str) -> ConfigError:
        """A ConfigError pointing at `path` (a key path, or its text) in the file this config came from."""
        path = parse_path(path) if isinstance(path, str) else path
        return ConfigError.single(message, format_path(path), self.line_of(path), self._file)

    def locate(self, problems: list[Problem], file: str | None = None) -> ConfigError:
        """A ConfigError for problems found in this config, each given the line of its key path."""
        for p in problems:
            if p.line is None and p.path:
                p.line = self.line_of(parse_path(p.path))
        return ConfigError(problems, file or self._file)

    def to_yaml(self) -> str:
        """The config as YAML, optional sections left out."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict:
        """The config as plain data, optional sections left out when unset."""
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
        """Epochs over all training phases."""
        return sum(p.epochs for p in self.train.phases) if self.train.phases else self.train.epochs
