"""`cnn train` end to end on the built-in shapes data: run directory, JSON, determinism, resume."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import helpers
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from cnncli.cli import app

TRAINED = {  # three classes, enough examples to learn them in a few epochs; deterministic, so runs repeat
    "deterministic": True,
    "data.shapes": {"test_examples": 200, "classes": ["x", "o", "square"]},
    "model.layers": [{"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "activation": "relu"},
                     {"type": "MaxPooling2D", "pool_size": 2}, {"type": "Dropout", "rate": 0.2}, {"type": "Flatten"},
                     {"type": "Dense", "units": 3, "activation": "softmax"}],
    "train.optimizer": {"type": "Adam", "learning_rate": 0.003},
}


def small_text(epochs: int = 2, n: int = 600, *changes) -> str:
    """The trained small config for `epochs` epochs on `n` training shapes, with `changes` (helpers.small_config)."""
    return helpers.small_config(TRAINED, {"train.epochs": epochs, "data.shapes.train_examples": n}, *changes)

runner = CliRunner()


def small_config(tmp_path: Path, epochs: int = 2, n: int = 600, extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(small_text(epochs, n) + extra)
    return path


def train_json(*args) -> dict:
    result = runner.invoke(app, ["train", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def read_history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_json_output_and_run_directory(tmp_path):
    doc = train_json(small_config(tmp_path), "--output", tmp_path / "runs")
    run_dir = Path(doc["run_dir"])
    assert run_dir.parent == tmp_path / "runs" / "tiny"
    for name in ("config.yaml", "run.json", "history.csv", "metrics.json", "model.keras", "curves.png",
                 "confusion_matrix.png", "checkpoints/state.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) == {"val", "test"}
    assert metrics["test"]["examples"] == 200
    assert metrics["test"]["accuracy"] == pytest.approx(doc["metrics"]["test"]["accuracy"])
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    history = read_history(run_dir)
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history[0])
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "complete"
    assert run["seed"] == 7
    assert run["class_names"] == ["x", "o", "square"]
    assert run["runtime"]["precision"] == "float32"
    assert run["versions"]["keras"].startswith("3.")
    phase = run["phases"][0]
    assert phase["epochs"] == 2 and phase["train_seconds"] > 0 and phase["examples_per_second"] > 0
    assert phase["trainable_params"] == run["trainable_params"] == 8 * 9 + 8 + 8 * 8 * 8 * 3 + 3
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["seed"] == 7 and resolved["train"]["epochs"] == 2


def test_random_seed_is_recorded(tmp_path):
    config = tmp_path / "noseed.yaml"
    config.write_text(small_text(1, 200, {"seed": None}))
    doc = train_json(config, "--output", tmp_path / "runs")
    seed = yaml.safe_load((Path(doc["run_dir"]) / "config.yaml").read_text())["seed"]
    assert isinstance(seed, int) and seed >= 0


def test_same_seed_deterministic_gives_identical_history(tmp_path):
    config = small_config(tmp_path, epochs=2, n=400)
    a = Path(train_json(config, "--output", tmp_path / "a")["run_dir"])
    b = Path(train_json(config, "--output", tmp_path / "b")["run_dir"])
    assert (a / "history.csv").read_bytes() == (b / "history.csv").read_bytes()


def test_runs_never_overwrite_each_other(tmp_path):
    config = small_config(tmp_path, epochs=1, n=200)
    first = train_json(config, "--output", tmp_path / "runs", "--smoke")["run_dir"]
    second = train_json(config, "--output", tmp_path / "runs", "--smoke")["run_dir"]
    assert first != second
    assert Path(first, "model.keras").exists() and Path(second, "model.keras").exists()


def test_smoke_runs_every_stage_and_checks_the_reload(tmp_path):
    doc = train_json(small_config(tmp_path, epochs=5), "--output", tmp_path / "runs", "--smoke")
    run_dir = Path(doc["run_dir"])
    assert len(read_history(run_dir)) == 1
    assert doc["metrics"]["smoke"]["reload_max_abs_diff"] <= 1e-5
    assert doc["metrics"]["test"]["examples"] == 32  # one batch of the test split


def test_command_line_overrides(tmp_path):
    doc = train_json(small_config(tmp_path), "--output", tmp_path / "runs", "--epochs", "1", "--batch-size", "50",
                     "--name", "renamed", "--set", "data.shapes.train_examples=300")
    run_dir = Path(doc["run_dir"])
    assert run_dir.parent.name == "renamed"
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["train"]["batch_size"] == 50
    assert resolved["data"]["shapes"]["train_examples"] == 300
    assert len(read_history(run_dir)) == 1


def test_evaluate_reports_the_same_numbers_as_metrics_json(tmp_path):
    run_dir = Path(train_json(small_config(tmp_path, epochs=1), "--output", tmp_path / "runs")["run_dir"])
    result = runner.invoke(app, ["evaluate", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert report["accuracy"] == pytest.approx(saved["accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(saved["loss"], rel=1e-4)
    assert np.sum(report["confusion_matrix"]) == 200
    assert [c["class"] for c in report["per_class"]] == ["x", "o", "square"]
    val = runner.invoke(app, ["evaluate", str(run_dir), "--split", "val", "--json"])
    assert json.loads(val.stdout)["examples"] == 120  # 20% of 600


def test_evaluate_without_a_run_is_a_clean_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    result = runner.invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ")
    assert "no config.yaml" in result.stderr


def test_labels_beyond_the_model_outputs_are_refused(tmp_path):
    config = small_config(tmp_path, extra="")
    text = config.read_text().replace("units: 3, activation: softmax", "units: 2, activation: softmax")
    config.write_text(text)
    result = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "labels go up to 2 (3 classes) but the model outputs 2 values" in result.stderr


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    """kill -9 during epoch 3 of 6, then --resume: every epoch once, same final weights."""
    import keras

    config = small_config(tmp_path, epochs=6, n=600)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    cnn = [sys.executable, "-m", "cnncli"]
    reference = subprocess.run([*cnn, "train", str(config), "--output", str(tmp_path / "ref"), "--quiet"],
                               env=env, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    # Killed in epoch 3, its steps done, nothing of it saved (a fault point: no race against the clock).
    killed = subprocess.run([*cnn, "train", str(config), "--output", str(tmp_path / "runs"), "--quiet"],
                            env={**env, "CNNCLI_FAULT": "epoch_trained@3"}, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs" / "tiny").iterdir()
    assert [int(r["epoch"]) for r in read_history(run_dir)] == [1, 2]
    assert not (run_dir / "model.keras").exists()
    resumed = subprocess.run([*cnn, "train", "--resume", str(run_dir), "--quiet"], env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert [int(r["epoch"]) for r in read_history(run_dir)] == [1, 2, 3, 4, 5, 6]
    ref_dir = next((tmp_path / "ref").glob("tiny/*"))
    assert (run_dir / "history.csv").read_text() == (ref_dir / "history.csv").read_text()
    ours = keras.models.load_model(run_dir / "model.keras", compile=False).get_weights()
    theirs = keras.models.load_model(ref_dir / "model.keras", compile=False).get_weights()
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("outcome", ["trained", "stopped by an error"])
def test_an_in_process_run_hands_back_the_callers_dtype_policy(tmp_path, monkeypatch, request, outcome):
    import keras

    config = small_config(tmp_path, epochs=1, n=120)
    before = keras.config.dtype_policy().name
    args = ["train", str(config), "--set", "runtime.precision=mixed_bfloat16", "--output", str(tmp_path / "runs")]
    if outcome != "trained":
        from cnncli import faults

        monkeypatch.setenv("CNNCLI_FAULT", "config_written:enospc")  # the disk fills once the run has begun
        faults.reset()
        request.addfinalizer(faults.reset)
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == (0 if outcome == "trained" else 1), result.output
    if outcome == "trained":
        run_json = json.loads((Path(json.loads(result.stdout)["run_dir"]) / "run.json").read_text())
        assert run_json["runtime"]["precision"] == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == before == "float32"
