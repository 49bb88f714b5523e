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


# ---------------------------------------------------------------- augmentation under every precision

def test_cutmix_trains_under_mixed_bfloat16(tmp_path):
    path = config(tmp_path, augment="  augment: [{type: CutMix}]\n", runtime="runtime: {precision: mixed_bfloat16}\n")
    assert cli("validate", path).exit_code == 0
    result = train(tmp_path, path)
    assert result.exit_code == 0, result.output


def test_augmentation_without_xla_kernels_trains_under_jit_compile(tmp_path):
    """XLA compiles the step's update, not the augmentation before it: MixUp's gamma draws and the
    affine transforms of RandomTranslation, RandomRotation and RandomZoom have no XLA kernel on CPU."""
    augment = ("  augment: [{type: RandomTranslation, height_factor: 0.1, width_factor: 0.1},\n"
               "            {type: RandomRotation, factor: 0.1}, {type: RandomZoom, height_factor: 0.1},\n"
               "            {type: MixUp}, {type: CutMix}]\n")
    path = config(tmp_path, augment=augment, runtime="runtime: {jit_compile: true}\n")
    assert cli("validate", path).exit_code == 0
    result = train(tmp_path, path)
    assert result.exit_code == 0, result.output
    metrics = json.loads(next((tmp_path / "runs").glob("*/*/metrics.json")).read_text())
    assert metrics["test"]["examples"] == 4 and 0.0 <= metrics["test"]["accuracy"] <= 1.0


def test_every_augmentation_layer_runs_under_every_precision_auto_may_choose():
    """The layers run in float32 before the model: the policy a run gets does not reach them."""
    from cnncli.config.loading import config_from_dict
    from cnncli.config.vocabulary import list_augmentations
    from cnncli.train.augment import AUTO_PRECISIONS, augmentation_problems

    needs = {"factor": 0.2, "height_factor": 0.1, "width_factor": 0.1, "height": 8, "width": 8, "max_number": 1}
    own = {"RandomPosterization": {"factor": [1, 8]}}  # bits kept: an integer range
    names = list_augmentations()
    assert {"CutMix", "MixUp", "RandomFlip", "Equalization", "RandAugment"} <= set(names)
    specs = [{"type": name, **own.get(name, {k: v for k, v in needs.items() if k in required_args(name)})}
             for name in names]
    for spec in specs:
        cfg = config_from_dict({"model": {"input_shape": [8, 8, 3], "layers": [{"type": "Flatten"}]},
                                "data": {"augment": [spec]}})
        for precision in AUTO_PRECISIONS:
            assert augmentation_problems(cfg, (8, 8, 3), (precision,)) == [], (spec, precision)
    assert keras.config.dtype_policy().name == "float32"  # the trial leaves the global policy as it was


@pytest.mark.parametrize("augment, expected", [
    ("{type: RandomHue, factor: 0.2}",
     ":7: data.augment[0]: RandomHue cannot run on 8×8×1 images: input must have 3 channels but input only has "
     "1 channels; `data.color_mode: rgb` gives the images 3 channels\n"),
    ("{type: RandomCrop, height: 6, width: 6}",
     ":7: data.augment[0]: RandomCrop turns the 8×8×1 training images into 6×6×1, but the model takes 8×8×1"),
])
@pytest.mark.parametrize("command", ["validate", "train"])
def test_an_augmentation_that_cannot_run_on_these_images_is_refused_by_validate_and_train(
        tmp_path, command, augment, expected):
    path = config(tmp_path, augment=f"  augment: [{augment}]\n")
    result = cli("validate", path) if command == "validate" else train(tmp_path, path)
    assert error_of(result).startswith(f"Error: {path}{expected}")
    assert no_run_dirs(tmp_path)


def required_args(name: str) -> list[str]:
    import inspect

    from cnncli.config.vocabulary import LAYERS

    return [p.name for p in inspect.signature(LAYERS.get(name).__init__).parameters.values()
            if p.default is p.empty and p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


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
