"""`cnn list`: every registry a config or option looks names up in can be listed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cnncli.cli import LISTS, app

runner = CliRunner()
KNOWN = {"layers": "Conv2D", "augmentations": "MixUp", "optimizers": "Adam", "schedules": "exponential",
         "backbones": "VGG16", "datasets": "fashion_mnist", "formats": "tflite", "templates": "lenet"}


def test_every_list_has_a_known_member():
    assert set(KNOWN) == set(LISTS)


@pytest.mark.parametrize("what", sorted(LISTS))
def test_list_prints_the_registry(what):
    result = runner.invoke(app, ["list", what, "--json"])
    assert result.exit_code == 0, result.output
    names = json.loads(result.stdout)
    assert KNOWN[what] in names
    assert names == sorted(names, key=str.lower)


def test_unknown_list_suggests_the_nearest():
    result = runner.invoke(app, ["list", "layer"])
    assert result.exit_code == 2  # a malformed command line, shown as Typer shows its own
    assert "Invalid value for 'WHAT': cannot list `layer` (did you mean `layers`?)" in " ".join(result.stderr.split())


def test_augmentations_are_the_layers_data_augment_takes():
    names = json.loads(runner.invoke(app, ["list", "augmentations", "--json"]).stdout)
    layers = json.loads(runner.invoke(app, ["list", "layers", "--json"]).stdout)
    assert {"CutMix", "RandomFlip", "RandomTranslation", "RandAugment"} <= set(names) <= set(layers)
    assert not {"Conv2D", "Dense", "Dropout", "Rescaling"} & set(names)
