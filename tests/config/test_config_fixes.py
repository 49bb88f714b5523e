"""Everyday config fixes: [h, w] input shapes, Keras's legacy argument names, regularizer shorthands,
a Rescaling that would scale twice, and CI annotations from `cnn validate --format github`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import load_config
from cnncli.errors import ConfigError
from cnncli.model.builder import build_model

runner = CliRunner()


def write(tmp_path: Path, layers: str, head: str = "", name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(f"model:\n{head}  layers:\n{layers}")
    return path


DENSE = "    - {type: Flatten}\n    - {type: Dense, units: 10, activation: softmax}\n"


def test_two_number_input_shape_means_one_grey_channel(tmp_path):
    path = write(tmp_path, DENSE, "  input_shape: [28, 28]\n")
    assert load_config(path).model.input_shape == [28, 28, 1]
    result = runner.invoke(app, ["summary", "--json", str(path)])
    assert json.loads(result.stdout)["input_shape"] == [None, 28, 28, 1]
    with pytest.raises(ConfigError, match=r"expected \[height, width, channels\] or \[height, width\], got \[28\]"):
        load_config(write(tmp_path, DENSE, "  input_shape: [28]\n"))


def test_argument_names_keras_still_accepts(tmp_path):
    path = write(tmp_path, "    - {type: Flatten}\n    - {type: LeakyReLU, name: leaky, alpha: 0.1}\n"
                 "    - {type: Dense, units: 10, activation: softmax}\n", "  input_shape: [8, 8]\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and result.stderr == ""  # and no deprecation warning on the terminal
    model = build_model(load_config(path), (8, 8, 1))
    assert model.get_layer("leaky").negative_slope == pytest.approx(0.1)
    typo = write(tmp_path, "    - {type: LeakyReLU, alpah: 0.1}\n" + DENSE, "  input_shape: [8, 8]\n")
    result = runner.invoke(app, ["validate", str(typo)])
    assert "LeakyReLU takes no argument `alpah` (did you mean `alpha`?)" in result.stderr


@pytest.mark.parametrize("written, kind, factors", [
    ("{l2: 1e-4}", "L2", {"l2": 1e-4}),
    ("{type: L2, l2: 1e-4}", "L2", {"l2": 1e-4}),
    ("{type: l1, l1: 0.01}", "L1", {"l1": 0.01}),
    ("{l1: 1e-5, l2: 1e-4}", "L1L2", {"l1": 1e-5, "l2": 1e-4}),
    ("l2", "L2", {"l2": 0.01}),  # Keras's own name, its default factor
])
def test_regularizer_forms(tmp_path, written, kind, factors):
    path = write(tmp_path, f"    - {{type: Flatten}}\n    - {{type: Dense, name: out, units: 10, "
                 f"kernel_regularizer: {written}}}\n", "  input_shape: [4, 4]\n")
    regularizer = build_model(load_config(path), (4, 4, 1)).get_layer("out").kernel_regularizer
    assert type(regularizer).__name__ == kind
    for key, value in factors.items():
        assert float(getattr(regularizer, key)) == pytest.approx(value)


@pytest.mark.parametrize("written, fragment", [
    ("{l3: 0.1}", "unknown regularizer `l3`"),
    ("{type: L2, l1: 0.1}", "model.layers[1].kernel_regularizer.l1: L2 regularizer takes no argument `l1`"),
    ("{type: L5, l2: 0.1}", "unknown regularizer `L5`"),
])
def test_bad_regularizers(tmp_path, written, fragment):
    path = write(tmp_path, "    - {type: Flatten}\n"
                           f"    - {{type: Dense, units: 10, kernel_regularizer: {written}}}\n",
                 "  input_shape: [4, 4]\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and fragment in result.stderr and "c.yaml:5:" in result.stderr


def test_rescaling_in_the_layers_warns_of_scaling_twice(tmp_path):
    path = write(tmp_path, "    - {type: Rescaling, scale: 0.00392156862}\n" + DENSE, "  input_shape: [8, 8]\n")
    summary = runner.invoke(app, ["summary", "--json", str(path)])
    warnings = json.loads(summary.stdout)["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith("line 4: model.layers[0]: a Rescaling layer, but cnn "
                                                         "already scales the raw pixels")
    assert "scaled twice" in warnings[0]
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 0 and "scaled twice" in result.stderr
    clean = runner.invoke(app, ["summary", "--json", str(write(tmp_path, DENSE, "  input_shape: [8, 8]\n", "d.yaml"))])
    assert json.loads(clean.stdout)["warnings"] == []


def test_validate_github_format_annotates_file_and_line(tmp_path):
    good = write(tmp_path, DENSE, "  input_shape: [8, 8]\n", "good.yaml")
    bad = write(tmp_path, "    - {type: Conv2D, filtrs: 4, kernel_size: 3}\n" + DENSE, "  input_shape: [8, 8]\n"
                "  backbone: null\n", "bad.yaml")
    result = runner.invoke(app, ["validate", "--format", "github", str(tmp_path)])  # a folder: its YAML files
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert f"ok      {good}" in lines
    assert f"::error file={bad},line=5::model.layers[0].filtrs: Conv2D takes no argument `filtrs` " \
           "(did you mean `filters`?); it takes: filters, kernel_size" in "\n".join(lines)
    result = runner.invoke(app, ["validate", "--format", "gitlab", str(good)])
    assert result.exit_code == 2
