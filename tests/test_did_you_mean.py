"""The did-you-mean of an unknown name reads the name as words: their order does not matter, nor a
slip in one of them, and a name that holds every typed word beats a closer string that lacks one."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.learning import LOSSES, SCHEDULES
from cnncli.config.vocabulary import BACKBONES, LAYERS
from cnncli.errors import closest
from cnncli.registry import UnknownName

LOSS_NAMES = ["binary_crossentropy", "categorical_crossentropy", "sparse_categorical_crossentropy",
              "squared_hinge", "hinge", "BinaryCrossentropy", "SparseCategoricalCrossentropy", "SquaredHinge"]


@pytest.mark.parametrize("typo, nearest", [
    ("crossentropy_sparse", "sparse_categorical_crossentropy"),
    ("sparse_crossentropy", "sparse_categorical_crossentropy"),
    ("categorical_crossentropy_sparse", "sparse_categorical_crossentropy"),
    ("crossentropy_sprase", "sparse_categorical_crossentropy"),  # a slip inside a word, too
    ("hinge_squared", "squared_hinge"),
    ("CrossentropySparse", "SparseCategoricalCrossentropy"),  # CamelCase typed, CamelCase suggested
    ("binary_crossentropie", "binary_crossentropy"),  # one word: the closest string, as before
])
def test_words_in_any_order(typo, nearest):
    assert closest(typo, LOSS_NAMES) == [nearest]


@pytest.mark.parametrize("registry, typo, nearest", [
    (LAYERS, "Pooling2DMax", "MaxPooling2D"),
    (LAYERS, "GlobalPoolingAverage2D", "GlobalAveragePooling2D"),
    (LAYERS, "Normalization_Batch", "BatchNormalization"),
    (LAYERS, "SeperableConv2D", "SeparableConv2D"),
    (LAYERS, "DepthwiseConv", "DepthwiseConv2D"),
    (SCHEDULES, "decay_cosine", "CosineDecay"),
    (BACKBONES, "net_res_50", "ResNet50"),
])
def test_registries_suggest_by_words(registry, typo, nearest):
    with pytest.raises(UnknownName, match=rf"\(did you mean `{nearest}`\?\)"):
        registry.get(typo)


def test_nothing_alike_suggests_nothing():
    assert closest("Zzyzx", LAYERS.names()) == []
    assert closest("focal_zz_qq", LOSSES.names()) == []


def test_cli_suggests_the_sparse_loss(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  input_shape: [8, 8, 1]\n  layers:\n    - {type: Flatten}\n"
                    "    - {type: Dense, units: 3, activation: softmax}\ntrain:\n  loss: crossentropy_sparse\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}:7: train.loss: unknown loss `crossentropy_sparse` "
                                    "(did you mean `sparse_categorical_crossentropy`?); valid: "), result.stderr
