"""Every shipped config in configs/ validates and summarizes, offline.

Configs that name a Keras dataset (mnist, cifar10, ...) rely on
`cnncli.data.describe` knowing the input shape and classes without
downloading; a new file in configs/ is tested here without being listed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))
runner = CliRunner()

# Totals the configs' own comments (and the course) state.
KNOWN_TOTALS = {
    "mnist_softmax.yaml": 7_850,
    "mnist_lenet.yaml": 3_274_634,
    "lenet5.yaml": 61_706,
    "resnet20_cifar.yaml": 274_442,
    "convmixer.yaml": 602_890,
    "vgg16_transfer.yaml": 14_714_688 + 512 * 256 + 256 + 256 * 2 + 2,
    "fashion_resnet.yaml": 289_962,
    "fashion_resnet_sweep.yaml": 289_962,
    "fashion_resnet_15min.yaml": 289_962,
    "fashion_resnet_15min_sweep.yaml": 289_962,
}


SHIPPED = {"convmixer.yaml", "fashion_pretrain.yaml", "fashion_resnet.yaml", "fashion_resnet_sweep.yaml",
           "fashion_resnet_15min.yaml", "fashion_resnet_15min_sweep.yaml",
           "inception_mini.yaml", "lenet5.yaml", "mnist_lenet.yaml", "mnist_mlp.yaml", "mnist_softmax.yaml",
           "resnet20_cifar.yaml", "resnet_mini.yaml", "shapes_cnn.yaml", "vgg16_transfer.yaml"}


def test_configs_exist():
    """The configs docs/getting-started.md's table lists (from_run/ needs a trained run and is tested with it)."""
    assert {p.name for p in CONFIGS} == SHIPPED
    assert set(KNOWN_TOTALS) <= SHIPPED


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates(path):
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"ok      {path}  (")
    assert result.stderr == ""  # no warnings either: shipped configs are clean


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_summary_json(path):
    result = runner.invoke(app, ["summary", "--json", str(path)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["total_params"] > 0
    assert doc["total_params"] == doc["trainable_params"] + doc["non_trainable_params"]
    assert doc["warnings"] == []
    assert doc["layers"][-1]["output_shape"][0] is None
    if path.name in KNOWN_TOTALS:
        assert doc["total_params"] == KNOWN_TOTALS[path.name]


@pytest.mark.parametrize("name", ["fashion_resnet.yaml", "fashion_resnet_sweep.yaml", "fashion_resnet_15min.yaml",
                                  "fashion_resnet_15min_sweep.yaml"])
def test_the_recipes_schedule_warms_up_one_epoch_and_decays_to_zero_at_the_last_step(name):
    """Their steps are written out (`every: step`): warmup plus decay is every step of every epoch, on the
    60,000 Fashion-MNIST training images less the validation split."""
    import math

    from cnncli.config.loading import load_config

    cfg = load_config([CONFIGS[0].parent / name])
    train = round(60_000 * (1 - (cfg.data.validation_split or 0)))
    steps = math.ceil(train / cfg.train.batch_size)
    schedule = cfg.train.lr_schedule.args
    assert cfg.train.lr_schedule.every == "step"
    assert schedule["warmup_steps"] == steps
    assert schedule["warmup_steps"] + schedule["decay_steps"] == cfg.train.epochs * steps
