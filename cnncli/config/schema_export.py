"""`cnn schema`: the config as a JSON Schema (2020-12), for editors and CI.

Generated from the pydantic models of `cnncli.config.schema` (each key with its
description and default; a key's description is its Field description, else
the comment beside it in config.py) plus what only Keras knows: the accepted
layer `type` names and, per layer type, the arguments its constructor takes.
The language keys handled before the schema (`extends`, `model.blocks`,
`repeat`, `shortcut`, `when`) are added by hand below.

The package ships the result as cnncli/schema/cnncli.schema.json, which the
`# yaml-language-server: $schema=...` line of every shipped config points at;
tests/test_schema.py fails when it is stale.
"""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path
from typing import Any, cast

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schema" / "cnncli.schema.json"  # package data, beside the wings
SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"
_FIELD_COMMENT = re.compile(r"^\s{4}(\w+)\s*:[^#\n]*#\s*(.+?)\s*$", re.MULTILINE)


def _comment_descriptions(cls: type) -> dict[str, str]:
    """{field: the comment on its line} from a schema class's source and its bases' (inherited fields)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):  # a subclass's comment wins
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        out.update((name.rstrip("_"), text) for name, text in _FIELD_COMMENT.findall(source))  # int_ is `int`
    return out


def _describe_fields(schema: dict) -> None:
    """Give every property without a description the comment config.py writes beside it."""
    import cnncli.config.schema as config_module

    for name, definition in schema.get("$defs", {}).items():
        cls = getattr(config_module, name, None)
        comments = _comment_descriptions(cls) if isinstance(cls, type) else {}
        for key, prop in definition.get("properties", {}).items():
            if "description" not in prop and key in comments:
                prop["description"] = comments[key]
    comments = _comment_descriptions(config_module.Config)
    for key, prop in schema.get("properties", {}).items():
        if "description" not in prop and key in comments:
            prop["description"] = comments[key]


# Keys config.py leaves without a comment: what an editor shows for them (a comment there takes precedence).
_FALLBACK = {
    "data": "where the images come from and how they are prepared",
    "model": "the network: input shape, optional pretrained backbone, layers and blocks",
    "train": "epochs, batch, optimizer, schedule, loss, metrics, callbacks and phases",
    "runtime": "device, precision, distribution and threads",
    "DataConfig.dataset": "shapes | mnist | fashion_mnist | cifar10 | cifar100 | idx | npz | image_folder | records",
    "DataConfig.color_mode": "grayscale | rgb; default: as the data is",
    "DataConfig.shapes": "settings of the built-in shapes dataset",
    "ModelConfig.backbone": "a keras.applications model ({name: VGG16, ...}) or {from_run: RUN_DIR} below the layers",
    "ModelConfig.layers": "Keras layers in order: {type: Conv2D, filters: 32, ...}, or uses of model.blocks",
    "OptimizerSpec.type": "a keras.optimizers class (Adam, SGD, AdamW, RMSprop, ...); other keys are its arguments",
    "LossSpec.type": "a keras.losses class (SparseCategoricalCrossentropy, CategoricalCrossentropy, ...); "
    "other keys are its arguments",
    "ScheduleSpec.type": "exponential | step | cosine | cosine_restarts | inverse_time | polynomial | "
    "reduce_on_plateau; other keys are the Keras class's arguments",
    "Phase.epochs": "epochs of this phase",
    "Phase.learning_rate": "the rate of this phase (default: the optimizer's)",
    "TrainConfig.epochs": "passes over the training data",
    "TrainConfig.optimizer": "{type: Adam, learning_rate: 0.001, ...}",
    "TrainConfig.lr_schedule": "a learning-rate schedule (null: a constant rate)",
    "TrainConfig.loss": "a Keras loss, e.g. sparse_categorical_crossentropy",
    "TrainConfig.metrics": "Keras metrics logged per epoch, e.g. [accuracy, top_5_accuracy]",
    "TrainConfig.early_stopping": "stop when a monitored value stops improving (Keras EarlyStopping)",
    "TrainConfig.checkpoint": "which epoch model.keras keeps",
    "TrainConfig.phases": "transfer-learning stages, each with its own trainable part and rate",
    "EarlyStopping.monitor": "a logged value, e.g. val_loss or val_accuracy",
    "EarlyStopping.patience": "epochs without improvement before stopping",
    "EarlyStopping.min_delta": "the least change that counts as an improvement",
    "EarlyStopping.mode": "auto | min | max: whether lower or higher is better",
    "EarlyStopping.restore_best_weights": "end with the best epoch's weights, not the last",
    "CheckpointSpec.mode": "auto | min | max: whether lower or higher is better",
    "RuntimeConfig.device": "auto | cpu | gpu",
    "RuntimeConfig.precision": "auto | float32 | mixed_bfloat16 | mixed_float16; auto picks by hardware",
    "RuntimeConfig.distribute": "null | mirrored (every local GPU) | multi_worker (TF_CONFIG) | tpu",
    "RuntimeConfig.intra_op_threads": "threads inside one op (default: measured per machine size; "
    "0: TensorFlow's own default)",
    "RuntimeConfig.inter_op_threads": "ops run at once (default: measured per machine size; "
    "0: TensorFlow's own default)",
    "ShapesSpec.classes": "which figures: x, o, square, triangle, plus, line",
    "ShapesSpec.train_examples": "images generated for training",
    "ShapesSpec.test_examples": "images generated for testing",
}


def _fill_fallbacks(schema: dict) -> None:
    for key, text in _FALLBACK.items():
        owner, _, name = key.rpartition(".")
        props = schema["$defs"].get(owner, {}).get("properties", {}) if owner else schema["properties"]
        if name in props:
            props[name].setdefault("description", text)


def _json_default(value: Any) -> Any:
    """A signature default as JSON, or the sentinel `...` when it has none there."""
    if value is inspect.Parameter.empty:
        return ...
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
        return list(value)
    return ...


def _layer_definition(name: str, cls: type, aliases: list[str]) -> dict:
    from cnncli.config.layer_args import kwargs_names
    from cnncli.config.vocabulary import _BASE_LAYER_ARGS, accepted_args

    signature = inspect.signature(cast(Any, cls).__init__).parameters  # the class's own __init__
    properties: dict[str, Any] = {
        "type": {"enum": aliases, "description": f"keras.layers.{name}"},
        "name": {"type": "string", "description": "stable name; other layers refer to it in `inputs`"},
        "inputs": {
            "type": "array",
            "items": {"type": "string"},
            "minItems": 1,
            "description": "named layers feeding this one (default: the previous main-path layer)",
        },
        "shortcut": {"type": "string", "description": "a named layer joined to the main path: inputs [main, it]"},
        "when": {"type": ["boolean", "string"], "description": "false: left out (a block parameter, e.g. $project)"},
    }
    for arg in accepted_args(cls, _BASE_LAYER_ARGS + kwargs_names(cls)):
        prop: dict[str, Any] = {}
        default = _json_default(signature[arg].default) if arg in signature else ...
        if default is not ...:
            prop["default"] = default
        properties.setdefault(arg, prop)
    return {"type": "object", "properties": properties, "required": ["type"], "additionalProperties": False}


def _layer_schemas() -> tuple[dict, list[str]]:
    """{def name: schema} per layer type, and every accepted spelling of a type."""
    from cnncli.config.vocabulary import LAYERS, snake

    defs, spellings = {}, []
    for name, cls in LAYERS.items():
        aliases = sorted({name, snake(name)})
        spellings += aliases
        defs[f"layer.{name}"] = _layer_definition(name, cls, aliases)
    return defs, sorted(set(spellings))


def _block_use(spellings: list[str]) -> dict:
    return {
        "type": "object",
        "description": "a use of a block defined in model.blocks: its parameters, `name`, `repeat`, `inputs`",
        "properties": {
            "type": {"type": "string", "not": {"enum": spellings}, "description": "a block name from model.blocks"},
            "name": {"type": "string", "description": "the use's name: its layers are <name>_<copy>_<layer>"},
            "inputs": {"type": "array", "items": {"type": "string"}, "description": "one named layer feeding it"},
            "trainable": {"type": "boolean", "description": "false freezes every layer of this use"},
            "repeat": {
                "type": "integer",
                "minimum": 1,
                "description": "copies chained one after another; an argument may list one value per copy",
            },
        },
        "required": ["type"],
    }


def _blocks_schema() -> dict:
    return {
        "type": "object",
        "description": "named, parameterised sub-graphs; a layer of `type: <block name>` expands in place",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "params": {
                    "type": "object",
                    "description": "parameters and their defaults (null: required); "
                    "layers refer to them as ${name} or $name",
                },
                "layers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"$ref": "#/$defs/LayerSpec"},
                    "description": "the block's layers; `input` names the block's input",
                },
                "output": {"type": "string", "description": "the layer that is the block's output (default: the last)"},
            },
            "required": ["layers"],
            "additionalProperties": False,
        },
    }


def build_schema() -> dict:
    """The JSON Schema of a cnncli config file."""
    from cnncli.config.schema import Config

    schema = Config.model_json_schema()
    _describe_fields(schema)
    _fill_fallbacks(schema)
    layer_defs, spellings = _layer_schemas()
    defs = schema["$defs"]
    defs["LayerSpec"] = {
        "description": "a Keras layer: `type` is a keras.layers class, the other keys its arguments; "
        "or a use of a block from model.blocks",
        "anyOf": [{"$ref": f"#/$defs/{name}"} for name in layer_defs] + [{"$ref": "#/$defs/BlockUse"}],
    }
    defs["BlockUse"] = _block_use(spellings)
    defs.update(layer_defs)
    defs["ModelConfig"]["properties"]["blocks"] = _blocks_schema()
    schema["properties"] = {
        "extends": {
            "description": "config files this one builds on, relative to this file; mappings merge, "
            "lists and values replace",
            "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
        },
        **schema["properties"],
    }
    return {
        "$schema": SCHEMA_URI,
        "$id": "https://cnncli.invalid/cnncli.schema.json",
        "title": "cnncli config",
        **schema,
    }


def schema_text() -> str:
    """The JSON Schema of a config file, as the text written to cnncli/schema/."""
    return json.dumps(build_schema(), indent=1, sort_keys=False) + "\n"
