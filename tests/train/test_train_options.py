"""Training options: every learning-rate schedule, early stopping, best checkpoint, augmentation, logs."""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_train import small_text
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.learning import SCHEDULES, list_schedules

runner = CliRunner()

SCHEDULE_ARGS = {  # arguments for each registered schedule, in Keras's names
    "exponential": {"initial_learning_rate": 0.01, "decay_steps": 1, "decay_rate": 0.5},
    "step": {"boundaries": [0, 1], "values": [0.01, 0.005, 0.001]},
    "cosine": {"initial_learning_rate": 0.01, "decay_steps": 3, "warmup_target": 0.02, "warmup_steps": 1},
    "cosine_restarts": {"initial_learning_rate": 0.01, "first_decay_steps": 2},
    "inverse_time": {"initial_learning_rate": 0.01, "decay_steps": 1, "decay_rate": 0.5},
    "polynomial": {"initial_learning_rate": 0.01, "decay_steps": 3, "end_learning_rate": 0.001},
    "reduce_on_plateau": {"monitor": "loss", "factor": 0.5, "patience": 0, "min_delta": 100.0},
}


def train(tmp_path: Path, extra: str = "", epochs: int = 3, *args: str) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(small_text(epochs, 200, {"train": yaml.safe_load(textwrap.dedent(extra)) or {}}))
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--json", *args])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_schedule_has_test_arguments():
    assert set(list_schedules()) == set(SCHEDULE_ARGS)


@pytest.mark.parametrize("name", sorted(SCHEDULE_ARGS))
def test_schedule_sets_the_rate_of_each_epoch(tmp_path, name):
    args = SCHEDULE_ARGS[name]
    flow = ", ".join(f"{k}: {json.dumps(v)}" for k, v in args.items())
    run_dir = train(tmp_path, f"  lr_schedule: {{type: {name}, {flow}}}\n",
                    3, "--set", "train.optimizer.learning_rate=0.01")
    rates = [float(r["learning_rate"]) for r in history(run_dir)]
    if name == "reduce_on_plateau":  # epoch 1 improves on infinity; each later one fails by min_delta: halve
        expected = [0.01, 0.01, 0.005]
    else:
        schedule = SCHEDULES.get(name)(**args)
        expected = [float(np.float32(schedule(epoch))) for epoch in range(3)]
    assert rates == pytest.approx(expected, rel=1e-6)


def test_a_step_schedule_counts_optimizer_steps(tmp_path):
    run_dir = train(tmp_path, "  lr_schedule: {type: exponential, initial_learning_rate: 0.01, decay_steps: 10, "
                              "decay_rate: 0.5, every: step}\n", 2)
    steps_per_epoch = 5  # 160 training examples (200 less 20% validation) in batches of 32
    rates = [float(r["learning_rate"]) for r in history(run_dir)]
    assert rates == pytest.approx([0.01 * 0.5 ** (steps_per_epoch * e / 10) for e in (1, 2)], rel=1e-5)


def test_early_stopping_ends_the_run(tmp_path):
    run_dir = train(tmp_path, "  early_stopping: {monitor: val_loss, patience: 1, min_delta: 100.0}\n", 6)
    assert [r["epoch"] for r in history(run_dir)] == ["1", "2"]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"


def test_best_checkpoint_becomes_the_saved_model(tmp_path):
    run_dir = train(tmp_path, "  checkpoint: {monitor: val_accuracy, save_best_only: true}\n", 3)
    run = json.loads((run_dir / "run.json").read_text())
    best = run["best"]
    rows = history(run_dir)
    assert best["monitor"] == "val_accuracy"
    assert best["value"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows))
    result = runner.invoke(app, ["evaluate", str(run_dir), "--split", "val", "--json"])
    assert json.loads(result.stdout)["accuracy"] == pytest.approx(best["value"], abs=1e-6)


def test_augmentation_trains_but_is_not_part_of_the_saved_model(tmp_path):
    import keras

    run_dir = train(tmp_path, "", 1, "--set",
                    "data.augment=[{type: RandomFlip, mode: horizontal}, {type: random_rotation, factor: 0.1}]")
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    assert not any("augment" in layer.name or "random" in layer.name for layer in model.layers)


def test_unknown_augmentation_argument_is_reported_with_its_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(small_text(1, 200, {"data.augment": [{"type": "RandomFlip", "mdoe": "horizontal"}]}))
    line = next(n for n, text in enumerate(config.read_text().splitlines(), 1) if "mdoe" in text)
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert (f"c.yaml:{line}: data.augment[0].mdoe: RandomFlip takes no argument `mdoe` (did you mean `mode`?)"
            in result.stderr)


def test_plain_progress_prints_one_line_per_epoch_when_not_a_terminal(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(small_text(2, 200))
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "img/s" in lines[0] and "val_accuracy" in lines[0]
    assert result.stdout.rstrip().splitlines()[-1].startswith("run directory: ")


def test_tensorboard_logs_are_written(tmp_path):
    pytest.importorskip("tensorboard")
    run_dir = train(tmp_path, "", 1)
    assert list((run_dir / "logs" / "train").iterdir())
