"""Argument values are refused where Keras refuses them or where no value could be meant (a negative
rate), not by a rule of thumb: a warmup from a learning rate of 0 is the example in Keras's CosineDecay."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import load_config
from cnncli.train.schedules import EpochSchedule

runner = CliRunner()

TINY = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Flatten}
    - {type: Dense, units: 3, activation: softmax}
train:
  epochs: 1
"""

WARMUP = ("train.lr_schedule={type: cosine, initial_learning_rate: 0.0, warmup_target: 0.003, "
          "warmup_steps: 100, decay_steps: 1000, every: step}")


def write(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(TINY)
    return path


def validate(tmp_path: Path, setting: str):
    return runner.invoke(app, ["validate", str(write(tmp_path)), "--set", setting])


def test_cosine_warmup_from_zero_as_in_keras_docs(tmp_path):
    result = validate(tmp_path, WARMUP)
    assert result.exit_code == 0, result.output
    cfg = load_config(write(tmp_path), [WARMUP])
    schedule = EpochSchedule(cfg.train.lr_schedule).step_schedule
    assert float(schedule(0)) == 0.0
    assert float(schedule(50)) == pytest.approx(0.0015)  # halfway up the warmup
    assert float(schedule(100)) == pytest.approx(0.003)


@pytest.mark.parametrize("setting", [
    "train.optimizer={type: Adam, learning_rate: 0.0}",
    "train.optimizer={type: Adam, learning_rate: 0.001, epsilon: 0.0}",
    "train.lr_schedule={type: polynomial, initial_learning_rate: 0, decay_steps: 10, end_learning_rate: 0.01}",
])
def test_zero_is_accepted_where_keras_accepts_it(tmp_path, setting):
    result = validate(tmp_path, setting)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("setting, expected", [
    ("train.lr_schedule={type: cosine, initial_learning_rate: -0.1, decay_steps: 10}",
     "train.lr_schedule.initial_learning_rate: must be at least 0, got -0.1"),
    ("train.optimizer={type: SGD, learning_rate: -1}", "train.optimizer.learning_rate: must be at least 0, got -1"),
    ("train.optimizer={type: Adam, epsilon: -1e-07}", "train.optimizer.epsilon: must be at least 0, got -1e-07"),
    ("train.lr_schedule={type: cosine, initial_learning_rate: 0.1, decay_steps: 0}",
     "train.lr_schedule.decay_steps: must be greater than 0, got 0"),  # Keras: `decay_steps` must be > 0
    ("model.layers[1].units=0", "model.layers[1].units: must be greater than 0, got 0"),
])
def test_negative_rates_and_zero_sizes_are_still_refused(tmp_path, setting, expected):
    result = validate(tmp_path, setting)
    assert result.exit_code == 1
    assert [line for line in result.stderr.splitlines() if line.startswith("Error:")] == \
        [f"Error: --set {setting}: {expected}"]  # the value came from --set, so that is where it is
