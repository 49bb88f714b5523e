"""The name registries: every entry resolves however it is spelled; unknown names help.

Parametrized over the registries themselves, so a Keras upgrade that adds a
layer adds its test.
"""

from __future__ import annotations

import keras
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.learning import OPTIMIZERS, list_optimizers
from cnncli.config.schema import DATASETS, LayerSpec
from cnncli.config.vocabulary import BACKBONES, LAYERS, check_layer_specs, list_backbones, list_layers, snake
from cnncli.registry import Registry, UnknownName

LAYER_NAMES = list_layers()
REFUSED = ["Lambda", "TFSMLayer", "TorchModuleWrapper", "JaxLayer", "FlaxLayer"]


def test_registry_holds_the_usual_cnn_layers():
    for name in ("Conv2D", "MaxPooling2D", "AveragePooling2D", "Dense", "Flatten", "Dropout",
                 "BatchNormalization", "GlobalAveragePooling2D", "ZeroPadding2D", "Add", "Concatenate",
                 "RandomFlip", "Rescaling"):
        assert name in LAYER_NAMES
    assert LAYER_NAMES == sorted(LAYER_NAMES, key=str.lower)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_resolves_by_any_spelling(name):
    cls = LAYERS.get(name)
    assert cls is getattr(keras.layers, name)
    assert issubclass(cls, keras.layers.Layer)
    for spelling in (snake(name), name.lower(), name.upper()):
        assert LAYERS.get(spelling) is cls, spelling
        assert LAYERS.canonical(spelling) == name
    problems = check_layer_specs([LayerSpec(type=snake(name))], "model.layers")
    assert [p.message for p in problems if ": missing " not in p.message] == []  # required arguments are asked for


@pytest.mark.parametrize("name", REFUSED + ["Layer", "InputLayer", "Wrapper", "TimeDistributed"])
def test_excluded_classes_are_not_registered(name):
    assert name not in LAYERS


@pytest.mark.parametrize("spelling", ["Lambda", "lambda", "LAMBDA"])
def test_lambda_is_refused_with_a_reason(spelling):
    [problem] = check_layer_specs([LayerSpec(type=spelling, function="print")], "model.layers")
    assert problem.path == "model.layers[0].type"
    assert problem.message == ("layer type `Lambda` is not allowed in a config: it runs arbitrary Python code; "
                               "use built-in layers")


def test_lambda_is_refused_through_the_cli(tmp_path):
    path = tmp_path / "lambda.yaml"
    path.write_text("model:\n  input_shape: [8, 8, 1]\n  layers:\n    - {type: lambda, function: print}\n"
                    "    - {type: Dense, units: 2}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}:4: model.layers[0].type: layer type `Lambda` is not allowed")


@pytest.mark.parametrize("typo, nearest", [
    ("Conv2DD", "Conv2D"), ("conv_2d", "Conv2D"), ("Flaten", "Flatten"), ("MaxPool2d_", "MaxPool2D"),
    ("Dence", "Dense"), ("BatchNormalisation", "BatchNormalization"),
    ("GlobalAvragePooling2D", "GlobalAveragePooling2D"),
])
def test_unknown_layer_suggests_the_nearest(typo, nearest):
    if typo in LAYERS:  # "conv_2d" normalizes to "conv2d": a valid spelling, not a typo
        assert LAYERS.canonical(typo) == nearest
        return
    with pytest.raises(UnknownName) as info:
        LAYERS.get(typo)
    message = str(info.value)
    assert message.startswith(f"unknown layer type `{typo}` (did you mean `{nearest}`?); valid: ")
    listed = message.split("; valid: ")[1]
    assert listed.startswith(", ".join(LAYER_NAMES[:12]))
    assert listed.endswith(f"({len(LAYER_NAMES)} in all)")


def test_unknown_layer_with_nothing_close_lists_names_without_a_guess():
    message = LAYERS.unknown_message("Zzyzx")
    assert message.startswith("unknown layer type `Zzyzx`; valid: Activation, ")
    assert "did you mean" not in message


def test_short_registry_lists_every_name():
    reg = Registry("colour", {"Red": 1, "Green": 2, "Blue": 3})
    assert reg.get("GREEN") == 2
    assert reg.unknown_message("Gren") == "unknown colour `Gren` (did you mean `Green`?); valid: Blue, Green, Red"


@pytest.mark.parametrize("name", list_backbones())
def test_backbone_resolves_case_insensitively(name):
    assert BACKBONES.get(name.lower()) is getattr(keras.applications, name)


def test_backbones_include_vgg16_and_suggest():
    assert "VGG16" in list_backbones()
    with pytest.raises(UnknownName, match=r"unknown backbone `VGG166` \(did you mean `VGG16`\?\)"):
        BACKBONES.get("VGG166")


@pytest.mark.parametrize("name", list_optimizers())
def test_optimizer_resolves_case_insensitively(name):
    assert OPTIMIZERS.get(name.lower()) is getattr(keras.optimizers, name)


def test_optimizers_include_the_classics():
    assert {"SGD", "Adam", "RMSprop", "AdamW"} <= set(list_optimizers())


def test_dataset_names_agree_between_schema_and_data_registry():
    from cnncli.data import list_datasets

    assert sorted(list_datasets()) == sorted(DATASETS)
