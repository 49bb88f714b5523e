"""Configs that look plausible but cannot train: each is one `Error:` report before any run directory
exists (or trains, where the intent is clear), never a traceback or a late answer.

All run in-process through the CLI on tiny `shapes` data with `--smoke`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()

TINY = """\
name: tiny
seed: 1
data:
  dataset: shapes
  shapes: {image_size: 12, train_examples: 48, test_examples: 12}
model:
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3}
    - {type: Flatten}
    - {type: Dense, units: 6, activation: softmax}
train:
  epochs: 1
  batch_size: 16
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cli(*args) -> object:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def error_of(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: "), result.stderr
    assert sum(line.startswith("Error:") for line in result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


def train(tmp_path: Path, config: Path, *args):
    return cli("train", config, "--smoke", "-q", "-o", tmp_path / "runs", *args)


def run_dirs(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "runs").glob("*/*") if p.is_dir()) if (tmp_path / "runs").exists() else []


# ---------------------------------------------------------------- a model that is not a classifier

NO_FLATTEN = TINY.replace("    - {type: Flatten}\n", "")


@pytest.mark.parametrize("command", ["validate", "train"])
def test_conv_then_dense_without_flatten_is_refused_naming_the_last_layer(tmp_path, command):
    path = write(tmp_path, NO_FLATTEN)
    result = cli("validate", path) if command == "validate" else train(tmp_path, path)
    assert error_of(result) == (
        f"Error: {path}:9: model.layers[1]: the last layer `dense` (Dense) outputs shape (batch, 10, 10, 6), "
        "but a classifier outputs (batch, classes); put a {type: Flatten} or {type: GlobalAveragePooling2D} "
        "before the Dense layers\n")
    assert run_dirs(tmp_path) == []  # refused before a run directory was made


def test_summary_of_a_model_without_flatten_warns_that_train_would_refuse_it(tmp_path):
    result = cli("summary", write(tmp_path, NO_FLATTEN), "--json")
    assert result.exit_code == 0, result.output
    [warning] = json.loads(result.stdout)["warnings"]
    assert warning.startswith("the last layer `dense` (Dense) outputs shape (batch, 10, 10, 6)")
    assert warning.endswith("`cnn train` would refuse it")


# ---------------------------------------------------------------- losses and labels

def test_categorical_crossentropy_trains_on_integer_labels(tmp_path):
    result = train(tmp_path, write(tmp_path, TINY), "--set", "train.loss=categorical_crossentropy", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["metrics"]["test"]["examples"] == 12


def test_loss_with_arguments_is_a_mapping_checked_against_the_keras_class(tmp_path):
    path = write(tmp_path, TINY.replace("softmax", "linear")
                 + "  loss: {type: SparseCategoricalCrossentropy, from_logits: true}\n")
    assert cli("validate", path).exit_code == 0
    result = train(tmp_path, path, "--json")
    assert result.exit_code == 0, result.output
    config = (Path(json.loads(result.stdout)["run_dir"]) / "config.yaml").read_text()
    assert "from_logits: true" in config  # the resolved config keeps the mapping, so --resume rebuilds it

    typo = write(tmp_path, TINY + "  loss: {type: SparseCategoricalCrossentropy, from_logit: true}\n", "t.yaml")
    assert error_of(cli("validate", typo)).startswith(
        f"Error: {typo}:14: train.loss.from_logit: SparseCategoricalCrossentropy takes no argument `from_logit` "
        "(did you mean `from_logits`?)")


def test_unknown_loss_lists_the_valid_ones_with_a_suggestion(tmp_path):
    path = write(tmp_path, TINY + "  loss: categorical_crosentropy\n")
    message = error_of(cli("validate", path))
    assert message.startswith(f"Error: {path}:14: train.loss: unknown loss `categorical_crosentropy` "
                              "(did you mean `categorical_crossentropy`?); valid: binary_crossentropy, ")
    assert "sparse_categorical_crossentropy" in message and "ctc" not in message


def test_a_loss_that_compares_vectors_gets_one_hot_labels():
    import keras

    from cnncli.config.learning import make_loss

    y = np.array([2, 0])
    probs = np.array([[0.1, 0.2, 0.7], [0.6, 0.3, 0.1]], "float32")
    one_hot = np.eye(3, dtype="float32")[y]
    for name, reference in (("categorical_crossentropy", keras.losses.categorical_crossentropy),
                            ("mse", keras.losses.mean_squared_error),
                            ("sparse_categorical_crossentropy", None)):
        got = np.asarray(make_loss(name)(y, probs))
        want = (keras.losses.sparse_categorical_crossentropy(y, probs) if reference is None
                else reference(one_hot, probs))
        assert got.shape == (2,) and got == pytest.approx(np.asarray(want), rel=1e-6), name


# ---------------------------------------------------------------- schedules, callbacks, optimizers, values

@pytest.mark.parametrize("setting, expected", [
    ("train.lr_schedule={type: exponential, decay_rate: 0.6}",
     "train.lr_schedule: ExponentialDecay: missing initial_learning_rate, decay_steps"),
    ("train.lr_schedule={type: step, boundaries: [2], values: [0.1]}",
     "train.lr_schedule: PiecewiseConstantDecay: The length of boundaries should be 1 less than the length of values"),
    ("train.lr_schedule={type: reduce_on_plateau, patience: two}",
     "train.lr_schedule.patience: expected an integer, got 'two'"),
    ("train.lr_schedule={type: reduce_on_plateau, patiense: 2}",
     "train.lr_schedule.patiense: ReduceLROnPlateau takes no argument `patiense` (did you mean `patience`?)"),
    ("train.optimizer.learning_rate=fast", "train.optimizer.learning_rate: expected a number, got 'fast'"),
    ("train.optimizer={type: SGD, nesterov: maybe}", "train.optimizer.nesterov: expected true or false, got 'maybe'"),
    ("train.optimizer={type: Adam, learning_rate: -0.1}",
     "train.optimizer.learning_rate: must be at least 0, got -0.1"),
    ("model.layers[0].filters='32'", "model.layers[0].filters: expected an integer, got '32'"),
    ("model.layers[0].kernel_size=[3, x]", "model.layers[0].kernel_size: expected an integer or a list of integers"),
    ("model.layers[0].use_bias=1", "model.layers[0].use_bias: expected true or false, got 1"),
    ("model.layers[2].activation=sofmax", "model.layers[2].activation: unknown activation `sofmax` "
                                          "(did you mean `softmax`?)"),
])
def test_values_are_checked_against_the_keras_signature_at_validate_time(tmp_path, setting, expected):
    path = write(tmp_path, TINY)
    message = error_of(cli("validate", path, "--set", setting))
    assert message.startswith(f"Error: --set {setting}: {expected}"), message  # named by the option, not the file
    assert error_of(train(tmp_path, path, "--set", setting)) == message
    assert run_dirs(tmp_path) == []


def test_values_in_the_file_point_at_their_line(tmp_path):
    path = write(tmp_path, TINY.replace("filters: 4", "filters: '32'")
                 + "  optimizer: {type: Adam, learning_rate: fast}\n"
                 + "  lr_schedule: {type: exponential, decay_rate: 0.6}\n")
    assert error_of(cli("validate", path)) == (
        "Error: 3 problems\n"
        f"  {path}:8: model.layers[0].filters: expected an integer, got '32'\n"
        f"  {path}:14: train.optimizer.learning_rate: expected a number, got 'fast'\n"
        f"  {path}:15: train.lr_schedule: ExponentialDecay: missing initial_learning_rate, decay_steps\n")


# ---------------------------------------------------------------- every problem at once

FIVE = (TINY.replace("seed: 1\n", "colour: red\n").replace("filters: 4", "filtrs: 4")  # an unknown key, a typo,
        .replace("softmax", "sofmax").replace("epochs: 1", "epochs: 0")  # an activation, an epoch count
        .replace("batch_size: 16", "optimizer: {type: Adamm}"))  # and an optimizer


@pytest.mark.parametrize("command", ["validate", "summary", "train"])
def test_five_problems_of_every_stage_are_reported_in_one_run(tmp_path, command):
    path = write(tmp_path, FIVE)
    result = train(tmp_path, path) if command == "train" else cli(command, path)
    lines = error_of(result).splitlines()
    assert lines[0] == "Error: 5 problems"
    assert [line.strip().split(": ")[:2] for line in lines[1:]] == [
        [f"{path}:2", "colour"], [f"{path}:8", "model.layers[0].filtrs"],
        [f"{path}:10", "model.layers[2].activation"], [f"{path}:12", "train.epochs"],
        [f"{path}:13", "train.optimizer.type"]], lines
    assert all(line.startswith("  ") for line in lines[1:])
    assert run_dirs(tmp_path) == []


def test_problems_in_the_training_vocabulary_and_in_shapes_are_reported_together(tmp_path):
    path = write(tmp_path, NO_FLATTEN + "  optimizer: {type: Adam, learning_rate: fast}\n")
    lines = error_of(cli("validate", path)).splitlines()
    assert lines[0] == "Error: 2 problems"
    assert lines[1].startswith(f"  {path}:9: model.layers[1]: the last layer `dense` (Dense) outputs shape")
    assert lines[2] == f"  {path}:13: train.optimizer.learning_rate: expected a number, got 'fast'"


# ---------------------------------------------------------------- a start that fails leaves nothing

def test_a_start_that_fails_in_the_first_epoch_leaves_no_run_directory(tmp_path):
    result = train(tmp_path, write(tmp_path, TINY), "--set", "train.optimizer={type: SGD, learning_rate: 1e30}")
    assert "no epoch had completed" in error_of(result)
    assert run_dirs(tmp_path) == []


def test_a_schema_problem_elsewhere_does_not_hide_the_shape_problem(tmp_path):
    path = write(tmp_path, NO_FLATTEN.replace("  epochs: 1\n", "  epochs: 0\n") + "runtime: {device: tpu}\n")
    lines = error_of(cli("validate", path)).splitlines()
    assert lines[0] == "Error: 3 problems"
    assert lines[1].startswith(f"  {path}:9: model.layers[1]: the last layer `dense` (Dense) outputs shape")
    assert lines[2].startswith(f"  {path}:11: train.epochs: input should be greater than or equal to 1")
    assert lines[3].startswith(f"  {path}:13: runtime.device: input should be 'auto', 'cpu' or 'gpu'")
