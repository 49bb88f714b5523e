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
