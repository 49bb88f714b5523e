"""Parts of a config that each pass their own checks but disagree with one another.

`cnn validate` and `cnn train` must give the same answer: an `Error:` line at the
config line, with the fix, or a run that trains. All on tiny `shapes` data
(8×8 images: bfloat16 is emulated on CPUs without its kernels, and slow).
"""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()

BASE = """\
name: agree
seed: 1
data:
  dataset: shapes
  shapes: {{image_size: 8, classes: [x, o, square], train_examples: 8, test_examples: 4}}
  validation_split: 0.0
{augment}model:
  layers:
    - {{type: Conv2D, filters: 2, kernel_size: 3}}
    - {{type: Flatten}}
{last}train:
  epochs: 1
  batch_size: 4
{loss}{runtime}"""


def config(tmp_path: Path, last: str = "    - {type: Dense, units: 3, activation: softmax}\n", loss: str = "",
           augment: str = "", runtime: str = "") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(last=last, loss=loss, augment=augment, runtime=runtime))
    return path


def cli(*args):
    policy = keras.config.dtype_policy()  # a run sets Keras's global policy; the next test starts from this one
    try:
        result = runner.invoke(app, [str(a) for a in args])
    finally:
        keras.config.set_dtype_policy(policy)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    return result


def train(tmp_path: Path, path: Path):
    return cli("train", path, "--smoke", "-q", "-o", tmp_path / "runs")


def error_of(result) -> str:
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("Error: "), result.stderr
    assert sum(line.startswith("Error:") for line in result.stderr.splitlines()) == 1, result.stderr
    return result.stderr


def no_run_dirs(tmp_path: Path) -> bool:
    return not list((tmp_path / "runs").glob("*/*")) if (tmp_path / "runs").exists() else True


# ---------------------------------------------------------------- output activation and loss

DENSE = "    - {type: Dense, units: 3}\n"  # line 11: no activation, so logits
SOFTMAX = "    - {type: Dense, units: 3, activation: softmax}\n"
SIGMOID = "    - {type: Dense, units: 3, activation: sigmoid}\n"
LOGITS_LOSS = "  loss: {type: SparseCategoricalCrossentropy, from_logits: true}\n"  # line 15

DISAGREE = {
    "logits into a plain loss name": (
        DENSE, "",
        ":11: model.layers[2]: sparse_categorical_crossentropy reads the model's output as probabilities "
        "(from_logits: false), but the last layer `dense` outputs logits (no activation), so training stalls near "
        "chance; add `activation: softmax` to that layer, or write the loss as "
        "{type: SparseCategoricalCrossentropy, from_logits: true}\n"),
    "logits into from_logits false": (
        DENSE, "  loss: {type: CategoricalCrossentropy, from_logits: false}\n",
        ":15: train.loss.from_logits: CategoricalCrossentropy reads the model's output as probabilities "
        "(from_logits: false), but the last layer `dense` (model.layers[2], line 11) outputs logits"),
    "softmax into from_logits true": (
        SOFTMAX, LOGITS_LOSS,
        ":15: train.loss.from_logits: SparseCategoricalCrossentropy with from_logits: true applies softmax to the "
        "model's output itself, but the last layer `dense` (model.layers[2], line 11) already applies `softmax`, "
        "so the output is squashed twice"),
    "a Softmax layer after Dense into from_logits true": (
        DENSE + "    - {type: Softmax}\n", LOGITS_LOSS,
        ":16: train.loss.from_logits: SparseCategoricalCrossentropy with from_logits: true applies softmax to the "
        "model's output itself, but the last layer `softmax` (model.layers[3], line 12) already applies `softmax`"),
    "sigmoid into a categorical loss": (
        SIGMOID, "  loss: categorical_crossentropy\n",
        ":15: train.loss: categorical_crossentropy reads the model's output as one probability distribution over "
        "the 3 classes, but the last layer `dense` (model.layers[2], line 11) applies `sigmoid`"),
    "logits into a binary loss": (
        DENSE, "  loss: binary_crossentropy\n",
        ":15: train.loss: binary_crossentropy reads the model's output as probabilities (from_logits: false), but "
        "the last layer `dense` (model.layers[2], line 11) outputs logits (no activation), so training stalls near "
        "chance; add `activation: sigmoid` to that layer"),
}


@pytest.mark.parametrize("case", list(DISAGREE))
def test_validate_refuses_an_output_activation_the_loss_disagrees_with(tmp_path, case):
    last, loss, expected = DISAGREE[case]
    path = config(tmp_path, last, loss)
    assert error_of(cli("validate", path)).startswith(f"Error: {path}{expected}")


@pytest.mark.parametrize("last, loss", [
    (DENSE, LOGITS_LOSS),  # logits, and a loss told so
    (DENSE + "    - {type: Activation, activation: softmax}\n    - {type: Dropout, rate: 0.1}\n", ""),
    (SIGMOID, "  loss: binary_crossentropy\n"),  # one-vs-rest on one-hot labels
    (SOFTMAX, "  loss: mse\n"),  # no from_logits to disagree with
])
def test_validate_accepts_an_output_the_loss_reads_as_it_is(tmp_path, last, loss):
    result = cli("validate", config(tmp_path, last, loss))
    assert result.exit_code == 0, result.output


def test_train_refuses_logits_into_a_probability_loss_before_any_run_directory(tmp_path):
    path = config(tmp_path, DENSE)
    assert error_of(train(tmp_path, path)) == f"Error: {path}{DISAGREE['logits into a plain loss name'][2]}"
    assert no_run_dirs(tmp_path)


def test_summary_warns_that_train_would_refuse_the_disagreement(tmp_path):
    result = cli("summary", config(tmp_path, SOFTMAX, LOGITS_LOSS), "--json")
    assert result.exit_code == 0, result.output
    [warning] = json.loads(result.stdout)["warnings"]
    assert warning.startswith("train.loss.from_logits: SparseCategoricalCrossentropy with from_logits: true")
    assert warning.endswith("`cnn train` would refuse it")


def test_units_other_than_the_classes_are_refused_already(tmp_path):
    path = config(tmp_path, "    - {type: Dense, units: 4, activation: softmax}\n")
    assert error_of(cli("validate", path)).startswith(
        f"Error: {path}:11: model.layers[2].units: the model outputs 4 values but shapes has 3 classes")


# ---------------------------------------------------------------- nothing reads a value before it is checked

@pytest.mark.parametrize("command", ["validate", "train"])
def test_a_string_pool_size_after_a_strided_conv_is_the_same_error_in_validate_and_train(tmp_path, command):
    path = tmp_path / "c.yaml"
    path.write_text(BASE.format(
        augment="", loss="", runtime="",
        last="    - {type: MaxPooling2D, pool_size: '2'}\n    - {type: Dense, units: 3, activation: softmax}\n")
        .replace("kernel_size: 3}", "kernel_size: 3, strides: 2}").replace("    - {type: Flatten}\n", "", 1)
        .replace("pool_size: '2'}\n", "pool_size: '2'}\n    - {type: Flatten}\n"))
    result = cli("validate", path) if command == "validate" else train(tmp_path, path)
    assert error_of(result) == (f"Error: {path}:10: model.layers[1].pool_size: expected an integer or a list of "
                                "integers, got '2'\n")
    assert no_run_dirs(tmp_path)


def test_the_step_cost_estimate_is_unknown_rather_than_a_crash_on_unchecked_values():
    from cnncli.config.loading import config_from_dict
    from cnncli.train.decisions import step_macs

    for bad in ("2", [], ["2", 2], {"a": 1}, [2]):
        cfg = config_from_dict({"model": {"input_shape": [12, 12, 1], "layers": [
            {"type": "Conv2D", "filters": 2, "kernel_size": 3, "strides": 2},
            {"type": "MaxPooling2D", "pool_size": bad}, {"type": "Flatten"}, {"type": "Dense", "units": 2}]}})
        step_macs(cfg)  # a number or None, whatever the value
