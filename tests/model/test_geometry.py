"""`cnn summary --json` reproduces the course's numbers.

Parameter counts (`16×3×3×3+16 = 448`), output sizes (`(W−F+2P)/S+1`),
receptive fields and the "does not tile" warning, all read from the JSON the
CLI prints for configs written here with `model.input_shape` stated, so no
dataset code is involved. The first row is always the model's own input
scaling (`rescale`, or `preprocess` before a backbone).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from cnncli.cli import app

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
runner = CliRunner()


def write_config(tmp_path: Path, name: str, input_shape, layers, **model) -> Path:
    path = tmp_path / f"{name}.yaml"
    cfg = {"model": {"input_shape": list(input_shape), **model, "layers": layers}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def summary_json(path: Path, *args: str) -> dict:
    result = runner.invoke(app, ["summary", "--json", str(path), *args])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def body(doc: dict) -> list[dict]:
    """The rows after the input scaling layer, which is checked here once per document."""
    first = doc["layers"][0]
    assert (first["name"], first["params"]) in (("rescale", 0), ("preprocess", 0))
    return doc["layers"][1:]


def conv(filters, kernel_size, **kw):
    return {"type": "Conv2D", "filters": filters, "kernel_size": kernel_size, **kw}


# ---------------------------------------------------------------- parameter counts

def test_sixteen_3x3_filters_on_rgb_have_448_params(tmp_path):
    doc = summary_json(write_config(tmp_path, "c16", [32, 32, 3], [conv(16, 3)]))
    [row] = body(doc)
    assert row["type"] == "Conv2D"
    assert row["params"] == 16 * 3 * 3 * 3 + 16 == 448
    assert row["output_shape"] == [None, 30, 30, 16]  # (32−3)/1+1
    assert row["macs"] == 30 * 30 * 16 * (3 * 3 * 3)
    assert (doc["total_params"], doc["trainable_params"], doc["non_trainable_params"]) == (448, 448, 0)


def test_two_convs_flatten_two_dense_per_layer_params(tmp_path):
    layers = [conv(8, 3, padding="same"), conv(16, 5, strides=2, padding="same"), {"type": "Flatten"},
              {"type": "Dense", "units": 512}, {"type": "Dense", "units": 4}]
    doc = summary_json(write_config(tmp_path, "small", [32, 32, 3], layers))
    rows = body(doc)
    assert [r["type"] for r in rows] == ["Conv2D", "Conv2D", "Flatten", "Dense", "Dense"]
    assert [r["params"] for r in rows] == [224, 3_216, 0, 2_097_664, 2_052]
    assert [r["output_shape"] for r in rows] == [
        [None, 32, 32, 8], [None, 16, 16, 16], [None, 4096], [None, 512], [None, 4]]
    assert doc["total_params"] == 224 + 3_216 + 2_097_664 + 2_052 == 2_103_156
    assert doc["trainable_params"] == 2_103_156 and doc["non_trainable_params"] == 0
    assert rows[3]["macs"] == 4096 * 512


@pytest.mark.parametrize("layers", [
    [{"type": "ZeroPadding2D", "padding": 2}, conv(10, 5, padding="valid")],
    [conv(10, 5, padding="same")],
], ids=["zero-padding-2-then-valid", "padding-same"])
def test_ten_5x5_filters_with_padding_2_keep_32x32(tmp_path, layers):
    doc = summary_json(write_config(tmp_path, "pad2", [32, 32, 3], layers))
    rows = body(doc)
    if len(rows) == 2:
        assert rows[0]["output_shape"] == [None, 36, 36, 3]  # 32 + 2·2
        assert rows[0]["params"] == 0
    assert rows[-1]["output_shape"] == [None, 32, 32, 10]  # (32−5+2·2)/1+1
    assert rows[-1]["params"] == 10 * (5 * 5 * 3 + 1) == 760
    assert doc["total_params"] == 760


def test_mnist_lenet_config_has_3274634_params():
    doc = summary_json(CONFIGS / "mnist_lenet.yaml", "--set", "model.input_shape=[28, 28, 1]")
    rows = body(doc)
    assert [(r["type"], r["params"]) for r in rows] == [
        ("Conv2D", 832), ("MaxPooling2D", 0), ("Conv2D", 51_264), ("MaxPooling2D", 0), ("Flatten", 0),
        ("Dense", 3_212_288), ("Dropout", 0), ("Dense", 10_250)]
    assert [r["output_shape"][1:] for r in rows[:5]] == [[28, 28, 32], [14, 14, 32], [14, 14, 64],
                                                          [7, 7, 64], [3136]]
    assert doc["total_params"] == 3_274_634
    assert doc["warnings"] == []


def test_lenet5_config_has_61706_params():
    doc = summary_json(CONFIGS / "lenet5.yaml", "--set", "model.input_shape=[32, 32, 1]")
    rows = body(doc)
    assert [r["params"] for r in rows if r["params"]] == [156, 2_416, 48_120, 10_164, 850]
    assert [r["output_shape"][1:] for r in rows[:5]] == [[28, 28, 6], [14, 14, 6], [10, 10, 16],
                                                          [5, 5, 16], [400]]
    assert doc["total_params"] == 61_706


# ---------------------------------------------------------------- VGG16 (built without weights)

@pytest.fixture(scope="module")
def vgg16_with_top(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16_top.yaml"
    path.write_text(yaml.safe_dump({"model": {
        "input_shape": [224, 224, 3],
        "backbone": {"name": "VGG16", "include_top": True, "weights": None, "trainable": True}}}))
    return summary_json(path)


@pytest.fixture(scope="module")
def vgg16_frozen_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg16_frozen.yaml"
    path.write_text(yaml.safe_dump({"model": {
        "input_shape": [224, 224, 3],
        "backbone": {"name": "VGG16", "weights": None, "trainable": False},
        "layers": [{"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 256, "activation": "relu"},
                   {"type": "Dense", "units": 2, "activation": "softmax"}]}}, sort_keys=False))
    return summary_json(path)


def test_vgg16_with_top_has_138357544_params(vgg16_with_top):
    doc = vgg16_with_top
    [base] = body(doc)
    assert (base["name"], base["output_shape"], base["params"]) == ("vgg16", [None, 1000], 138_357_544)
    assert doc["total_params"] == doc["trainable_params"] == 138_357_544
    assert doc["non_trainable_params"] == 0


def test_vgg16_without_top_has_14714688_params(vgg16_frozen_base):
    base = body(vgg16_frozen_base)[0]
    assert (base["name"], base["output_shape"], base["params"]) == ("vgg16", [None, 7, 7, 512], 14_714_688)
    assert base["receptive_field"] == [212, 212]  # the classic receptive field of VGG16's last pool


def test_frozen_vgg16_base_counts_as_non_trainable(vgg16_frozen_base):
    doc = vgg16_frozen_base
    rows = body(doc)
    assert rows[0]["trainable_params"] == 0
    head = 512 * 256 + 256 + 256 * 2 + 2
    assert [r["params"] for r in rows[1:]] == [0, 512 * 256 + 256, 256 * 2 + 2]
    assert doc["non_trainable_params"] == 14_714_688
    assert doc["trainable_params"] == head == 131_842
    assert doc["total_params"] == 14_714_688 + head


# ---------------------------------------------------------------- the JSON contract

def test_summary_json_contract(tmp_path):
    layers = [conv(4, 3, padding="same"), {"type": "Flatten"}, {"type": "Dense", "units": 3}]
    doc = summary_json(write_config(tmp_path, "contract", [8, 8, 1], layers))
    assert {"total_params", "trainable_params", "non_trainable_params", "layers", "warnings"} <= set(doc)
    assert isinstance(doc["warnings"], list)
    for row in doc["layers"]:
        assert {"name", "type", "output_shape", "params", "receptive_field"} <= set(row)
        assert row["output_shape"][0] is None  # the batch dimension
        assert all(isinstance(d, int) for d in row["output_shape"][1:])
        assert isinstance(row["params"], int)
    assert [r["name"] for r in doc["layers"]] == ["rescale", "conv2d", "flatten", "dense"]
    assert doc["total_params"] == sum(r["params"] for r in doc["layers"]) == 40 + 0 + 8 * 8 * 4 * 3 + 3


# ---------------------------------------------------------------- receptive fields

@pytest.mark.parametrize("pad", [
    lambda: [conv(1, 3, strides=2, padding="same")],
    lambda: [{"type": "ZeroPadding2D", "padding": 1}, conv(1, 3, strides=2, padding="valid")],
], ids=["padding-same", "zero-padding-1"])
def test_receptive_field_grows_with_stride(tmp_path, pad):
    layers = pad() + pad() + [{"type": "Flatten"}, {"type": "Dense", "units": 2}]
    rows = body(summary_json(write_config(tmp_path, "rf", [5, 5, 1], layers)))
    convs = [r for r in rows if r["type"] == "Conv2D"]
    assert [c["output_shape"][1:3] for c in convs] == [[3, 3], [2, 2]]  # (5−3+2)/2+1, (3−3+2)/2+1
    assert [c["receptive_field"] for c in convs] == [[3, 3], [7, 7]]  # 1+2·1, then 3+2·2
    assert [r["receptive_field"] for r in rows if r["type"] in ("Flatten", "Dense")] == [None, None]


def test_receptive_field_of_input_and_dilation(tmp_path):
    layers = [conv(2, 3, dilation_rate=2), {"type": "GlobalAveragePooling2D"}, {"type": "Dense", "units": 2}]
    doc = summary_json(write_config(tmp_path, "dil", [9, 9, 1], layers))
    assert doc["layers"][0]["receptive_field"] == [1, 1]  # rescale: one pixel
    rows = body(doc)
    assert rows[0]["output_shape"] == [None, 5, 5, 2]  # effective 5×5 window on 9×9
    assert rows[0]["receptive_field"] == [5, 5]
    assert rows[1]["receptive_field"] is None  # global pooling ends the spatial structure


def test_shapes_cnn_receptive_fields_match_its_comments():
    """configs/shapes_cnn.yaml says the field is 10×10 after the second pool."""
    rows = body(summary_json(CONFIGS / "shapes_cnn.yaml", "--set", "model.input_shape=[32, 32, 1]"))
    spatial = [(r["type"], r["output_shape"][1], r["receptive_field"]) for r in rows[:5]]
    assert spatial == [("Conv2D", 32, [3, 3]), ("MaxPooling2D", 16, [4, 4]), ("Conv2D", 16, [8, 8]),
                       ("MaxPooling2D", 8, [10, 10]), ("Conv2D", 8, [18, 18])]


def test_merge_takes_the_larger_receptive_field(tmp_path):
    layers = [conv(2, 3, padding="same", name="a"), conv(2, 3, padding="same", name="b"),
              {"type": "Add", "name": "sum", "inputs": ["a", "b"]}, {"type": "Flatten"},
              {"type": "Dense", "units": 2}]
    rows = {r["name"]: r for r in summary_json(write_config(tmp_path, "merge", [6, 6, 1], layers))["layers"]}
    assert (rows["a"]["receptive_field"], rows["b"]["receptive_field"]) == ([3, 3], [5, 5])
    assert rows["sum"]["receptive_field"] == [5, 5]


# ---------------------------------------------------------------- tiling warnings

def test_stride_that_does_not_tile_warns(tmp_path):
    layers = [conv(2, 3, strides=3, name="c1"), {"type": "Flatten"},
              {"type": "Dense", "units": 2, "activation": "softmax"}]
    doc = summary_json(write_config(tmp_path, "tile", [7, 7, 1], layers))
    [warning] = doc["warnings"]
    assert warning.startswith("c1: ")
    assert "(7−3)/3+1 is not an integer" in warning
    assert body(doc)[0]["output_shape"] == [None, 2, 2, 2]  # floor((7−3)/3)+1


def test_pool_window_that_does_not_tile_warns(tmp_path):
    layers = [{"type": "MaxPooling2D", "pool_size": 2, "name": "p"}, {"type": "Flatten"},
              {"type": "Dense", "units": 2, "activation": "softmax"}]
    [warning] = summary_json(write_config(tmp_path, "pool", [5, 5, 1], layers))["warnings"]
    assert warning.startswith("p: ") and "2×2 window" in warning and "(5−2)/2+1 is not an integer" in warning


@pytest.mark.parametrize("layer", [conv(2, 3, strides=2), conv(2, 3, strides=3, padding="same")],
                         ids=["tiles-exactly", "same-padding"])
def test_no_warning_when_the_window_fits(tmp_path, layer):
    layers = [layer, {"type": "Flatten"}, {"type": "Dense", "units": 2, "activation": "softmax"}]
    assert summary_json(write_config(tmp_path, "fits", [7, 7, 1], layers))["warnings"] == []


def test_warning_goes_to_stderr_in_table_mode(tmp_path):
    layers = [conv(2, 3, strides=3, name="c1"), {"type": "Flatten"}, {"type": "Dense", "units": 2}]
    result = runner.invoke(app, ["summary", str(write_config(tmp_path, "tile", [7, 7, 1], layers))])
    assert result.exit_code == 0, result.stderr
    assert "warning" in result.stderr and "(7−3)/3+1 is not an integer" in result.stderr
    assert "Total params: 38" in result.stdout


# ---------------------------------------------------------------- shapes that vanish

VANISHING = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3}   # 8 → 6
    - {type: MaxPooling2D, pool_size: 2}           # 6 → 3
    - {type: Conv2D, filters: 4, kernel_size: 5}   # 3 → −1
    - {type: Flatten}
    - {type: Dense, units: 2}
"""


@pytest.mark.parametrize("command", ["summary", "validate"])
def test_output_that_reaches_zero_is_a_config_error(tmp_path, command):
    path = tmp_path / "vanish.yaml"
    path.write_text(VANISHING)
    result = runner.invoke(app, [command, str(path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # not an escaped Keras error
    assert result.stderr.startswith(f"Error: {path}:6: model.layers[2]: Conv2D cannot take input of shape "
                                    "(batch, 3, 3, 4)")
    assert "zero or negative" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_pool_larger_than_its_input_is_a_config_error(tmp_path):
    path = tmp_path / "pool.yaml"
    path.write_text("model:\n  input_shape: [2, 2, 1]\n  layers:\n"
                    "    - {type: MaxPooling2D, pool_size: 3}\n    - {type: Flatten}\n    - {type: Dense, units: 2}\n")
    result = runner.invoke(app, ["summary", str(path)])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {path}:4: model.layers[0]: MaxPooling2D cannot take input of shape "
                                    "(batch, 2, 2, 1): ")
    assert "Exception encountered" not in result.stderr  # Keras's wrapper text is stripped
