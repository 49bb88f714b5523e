"""Warmup then cosine decay per step: the config validates from a rate of 0, trains, and the optimizer's
rate at each step is Keras's CosineDecay."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import helpers
import numpy as np
from typer.testing import CliRunner

from cnncli.cli import app

SCHEDULE = {"type": "cosine", "initial_learning_rate": 0.0, "warmup_target": 0.003, "warmup_steps": 4,
            "decay_steps": 20, "every": "step"}


def test_schedule_is_keras_cosine_decay(tmp_path):
    import keras

    from cnncli.config.loading import load_config
    from cnncli.train.schedules import EpochSchedule

    path = tmp_path / "c.yaml"
    path.write_text(helpers.small_config({"train.lr_schedule": SCHEDULE}))
    schedule = EpochSchedule(load_config(path).train.lr_schedule).step_schedule
    keras_own = keras.optimizers.schedules.CosineDecay(0.0, 20, warmup_target=0.003, warmup_steps=4)
    steps = np.arange(30)
    np.testing.assert_allclose([float(schedule(s)) for s in steps], [float(keras_own(s)) for s in steps], atol=0)
    assert float(schedule(0)) == 0.0 and float(schedule(4)) == np.float32(0.003)


def test_trains_with_the_rate_of_its_last_step(tmp_path):
    import keras

    path = tmp_path / "c.yaml"
    path.write_text(helpers.small_config({"train.lr_schedule": SCHEDULE, "train.epochs": 2}))
    result = CliRunner().invoke(app, ["train", str(path), "--output", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.stderr
    run_dir = Path(json.loads(result.stdout)["run_dir"])
    with open(run_dir / "history.csv", newline="") as f:
        rates = [float(row["learning_rate"]) for row in csv.DictReader(f)]
    keras_own = keras.optimizers.schedules.CosineDecay(0.0, 20, warmup_target=0.003, warmup_steps=4)
    steps = 5  # 160 training examples in batches of 32, per epoch
    np.testing.assert_allclose(rates, [float(keras_own(steps)), float(keras_own(2 * steps))], rtol=1e-6)
