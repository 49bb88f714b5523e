"""Bad configs: each is exit 1 and one readable "Error: …" report, never a traceback.

Every case runs through both `cnn validate` and `cnn summary`; the report must
name the file, the key path and the line where there is one. Also: `--set`
overrides (`apply_overrides`) and `cnn validate --print`.
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import apply_overrides, config_from_dict
from cnncli.errors import ConfigError

runner = CliRunner()

OK_MODEL = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Flatten}
    - {type: Dense, units: 2}
"""

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))

# id -> (file contents, fragments the report must contain; "{file}" is the config's path)
CASES = {
    "yaml-syntax": ("model:\n  input_shape: [8, 8, 1\n  layers:\n    - {type: Flatten}\n",
                    ["{file}:3: invalid YAML: ", "expected ',' or ']'"]),
    "top-level-typo": ("trian:\n  epochs: 3\n" + OK_MODEL,
                       ["{file}:1: trian: unknown key `trian` (did you mean `train`?); valid keys here: ",
                        "data, model, train, runtime"]),
    "nested-typo": ("data:\n  datset: mnist\n" + OK_MODEL,
                    ["{file}:2: data.datset: unknown key `datset` (did you mean `dataset`?)"]),
    "layer-argument-typo": (OK_MODEL.replace("{type: Flatten}", "{type: Conv2D, filtrs: 4, kernel_size: 3}"),
                            ["{file}:4: model.layers[0].filtrs: Conv2D takes no argument `filtrs` "
                             "(did you mean `filters`?); it takes: filters, kernel_size, strides, padding,"]),
    "layer-argument-typo-block-style": (
        "model:\n  input_shape: [8, 8, 1]\n  layers:\n    - type: Conv2D\n      filters: 4\n"
        "      kernel_szie: 3\n    - {type: Flatten}\n    - {type: Dense, units: 2}\n",
        ["{file}:6: model.layers[0].kernel_szie: Conv2D takes no argument `kernel_szie` "
         "(did you mean `kernel_size`?)"]),
    "wrong-type": ("train:\n  epochs: ten\n" + OK_MODEL,
                   ["{file}:2: train.epochs: input should be a valid integer", "got 'ten'"]),
    "negative-batch-size": ("train:\n  batch_size: -1\n" + OK_MODEL,
                            ["{file}:2: train.batch_size: input should be greater than or equal to 1, got -1"]),
    "negative-kernel-size": (OK_MODEL.replace("{type: Flatten}", "{type: Conv2D, filters: 4, kernel_size: -3}"),
                             ["{file}:4: model.layers[0].kernel_size: must be greater than 0, got -3"]),
    "negative-input-shape": (OK_MODEL.replace("[8, 8, 1]", "[8, -8, 1]"),
                             ["{file}:2: model.input_shape: sizes must be positive, got [8, -8, 1]"]),
    "unknown-layer-type": (OK_MODEL.replace("Flatten", "Flaten"),
                           ["{file}:4: model.layers[0].type: unknown layer type `Flaten` "
                            "(did you mean `Flatten`?); valid: Activation, "]),
    "unknown-backbone": (OK_MODEL.replace("  layers:", "  backbone: {name: Xceptoin, weights: null}\n  layers:"),
                         ["{file}:3: model.backbone.name: unknown backbone `Xceptoin` (did you mean `Xception`?); "
                          "valid: ConvNeXtBase, ", " in all)"]),
    "unknown-backbone-argument": (
        OK_MODEL.replace("  layers:", "  backbone: {name: VGG16, weights: null, alpah: 1}\n  layers:"),
        ["{file}:3: model.backbone.alpah: VGG16 takes no argument `alpah`"]),
    "unknown-dataset": ("data:\n  dataset: mnsit\n" + OK_MODEL,
                        ["{file}:2: data.dataset: unknown dataset `mnsit` (did you mean `mnist`?); valid: shapes, "
                         "mnist, fashion_mnist, cifar10, cifar100, idx, npz, image_folder"]),
    "dataset-needs-path": ("data:\n  dataset: npz\n" + OK_MODEL,
                           ["{file}:1: data.path: dataset `npz` needs `data.path`"]),
    "shapes-shrink-to-nothing": (
        "model:\n  input_shape: [8, 8, 1]\n  layers:\n    - {type: Conv2D, filters: 4, kernel_size: 3}\n"
        "    - {type: MaxPooling2D, pool_size: 2}\n    - {type: MaxPooling2D, pool_size: 2}\n"
        "    - {type: MaxPooling2D, pool_size: 2}\n    - {type: Flatten}\n    - {type: Dense, units: 2}\n",
        ["{file}:7: model.layers[3]: MaxPooling2D cannot take input of shape (batch, 1, 1, 4): ",
         "zero or negative"]),
    "no-layers": ("model:\n  input_shape: [8, 8, 1]\n",
                  ["{file}:1: model.layers: the model has no layers; add at least an output layer"]),
    "empty-file": ("", ["{file}: the file is empty; a config needs at least `model.layers`"]),
    "comments-only": ("# nothing yet\n", ["{file}: the file is empty"]),
    "top-level-list": ("- model\n- train\n", ["{file}:1: the top level must be a mapping of keys, got a list"]),
    "top-level-scalar": ("just words\n", ["{file}:1: the top level must be a mapping of keys, got a str"]),
    "python-object-tag": ("model: !!python/object/apply:os.system ['touch {dir}/pwned']\n",
                          ["{file}:1: model: tag `!!python/object/apply:os.system` is not allowed"]),
    "python-object-tag-on-mapping": ("model: !!python/object:collections.OrderedDict {}\n",
                                     ["{file}:1: model: tag `!!python/object:collections.OrderedDict` "
                                      "is not allowed"]),
    "python-name-tag": ("seed: !!python/name:os.system ''\n", ["{file}:1: seed: tag `!!python/name:os.system`"]),
    "billion-laughs": (LAUGHS, ["the document is too large or too deeply nested"]),
    "duplicate-top-level-key": (OK_MODEL + "model:\n  input_shape: [4, 4, 1]\n",
                                ["{file}:6: model: key `model` appears twice"]),
    "duplicate-layer-key": (OK_MODEL.replace("units: 2}", "units: 2, units: 3}"),
                            ["{file}:5: model.layers[1].units: key `units` appears twice"]),
    "inputs-names-missing-layer": (
        "model:\n  input_shape: [8, 8, 1]\n  layers:\n    - {type: Flatten, name: flat}\n"
        "    - {type: Dense, units: 2, inputs: [flta]}\n",
        ["{file}:5: model.layers[1].inputs: input `flta` is not a layer named earlier (did you mean `flat`?)"]),
    "layer-name-used-twice": (
        "model:\n  input_shape: [8, 8, 1]\n  layers:\n    - {type: Flatten, name: x}\n"
        "    - {type: Dense, units: 2, name: x}\n",
        ["{file}:5: model.layers[1].name: layer name `x` is used twice"]),
    "lambda-layer": (OK_MODEL.replace("{type: Flatten}", "{type: Lambda, function: print}"),
                     ["{file}:4: model.layers[0].type: layer type `Lambda` is not allowed in a config"]),
    "phases-without-backbone": ("train:\n  phases: [{epochs: 1}]\n" + OK_MODEL,
                                ["{file}:2: train.phases: phases freeze and unfreeze a backbone"]),
}


def invoke(args: list[str]):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"escaped exception: {result.exception!r}"
    return result


def assert_error(result, fragments: list[str]) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("Error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for fragment in fragments:
        assert fragment in result.stderr
    return result.stderr


@pytest.mark.parametrize("command", ["validate", "summary"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_config(tmp_path, case, command):
    text, fragments = CASES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("{dir}", str(tmp_path)))
    result = invoke([command, path])  # billion-laughs: its memory bound is asserted in test_hostile_config
    assert_error(result, [f.replace("{file}", str(path)) for f in fragments])
    assert result.stdout == ""
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("command", ["validate", "summary"])
def test_missing_file(tmp_path, command):
    path = tmp_path / "nope.yaml"
    assert_error(invoke([command, path]), [f"Error: {path}: no such file"])


@pytest.mark.parametrize("command, message", [("validate", "a folder with no config files (*.yaml, *.yml) in it"),
                                               ("summary", "is a directory, expected a YAML file")])
def test_directory(tmp_path, command, message):  # validate takes folders of configs; summary one file
    assert_error(invoke([command, tmp_path]), [f"Error: {tmp_path}: {message}"])


@pytest.mark.parametrize("command", ["validate", "summary"])
def test_binary_file(tmp_path, command):
    path = tmp_path / "photo.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10")
    assert_error(invoke([command, path]), [f"Error: {path}: is a binary file, not YAML text"])


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_error(invoke(["validate", path]), [f"Error: {path}: is not UTF-8 text (byte 9)"])


def test_oversized_file(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# padding\n" * 200_000)
    assert_error(invoke(["summary", path]), [f"Error: {path}: file is 2,000,000 bytes; configs are limited to "])


# ---------------------------------------------------------------- several problems at once

def problem_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()[1:] if line.startswith("  ")]


@pytest.mark.parametrize("command", ["validate", "summary"])
def test_schema_errors_are_reported_together(tmp_path, command):
    path = tmp_path / "several.yaml"
    path.write_text("trian: {}\ntrain:\n  epochs: ten\n  batch_size: -1\n" + OK_MODEL)
    stderr = assert_error(invoke([command, path]), ["Error: 3 problems\n"])
    lines = problem_lines(stderr)
    assert len(lines) == 3
    assert [line.split(": ")[:2] for line in lines] == [
        [f"  {path}:1", "trian"], [f"  {path}:3", "train.epochs"], [f"  {path}:4", "train.batch_size"]]


@pytest.mark.parametrize("command", ["validate", "summary"])
def test_schema_and_layer_errors_are_reported_together(tmp_path, command):
    path = tmp_path / "mixed.yaml"
    path.write_text("train:\n  epochs: 0\nmodel:\n  input_shape: [8, 8, 1]\n  layers:\n"
                    "    - {type: Conv2D, filtrs: 3, kernel_size: 3}\n    - {type: Flaten}\n"
                    "    - {type: Dense, units: 2}\n")
    stderr = assert_error(invoke([command, path]), ["Error: 3 problems\n"])
    lines = problem_lines(stderr)
    assert len(lines) == 3
    assert lines[0].startswith(f"  {path}:2: train.epochs: ")
    assert lines[1].startswith(f"  {path}:6: model.layers[0].filtrs: Conv2D takes no argument `filtrs`")
    assert lines[2].startswith(f"  {path}:7: model.layers[1].type: unknown layer type `Flaten`")


def test_layer_errors_are_reported_together(tmp_path):
    path = tmp_path / "layers.yaml"
    path.write_text(OK_MODEL.replace("Flatten", "Flaten").replace("units: 2", "unts: 2"))
    stderr = assert_error(invoke(["summary", path]), ["Error: 2 problems\n"])
    assert [line.split(": ")[1] for line in problem_lines(stderr)] == [
        "model.layers[0].type", "model.layers[1].unts"]


def test_validate_reports_each_file(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(OK_MODEL.replace("units: 2}", "units: 2, activation: softmax}"))
    bad.write_text("train:\n  epochs: ten\n" + OK_MODEL)
    result = invoke(["validate", good, bad])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"ok      {good}  (130 parameters, input (8, 8, 1))")
    assert result.stderr.startswith(f"Error: {bad}:2: train.epochs: ")


def test_validate_json_reports_errors_in_the_document(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: ten\n" + OK_MODEL)
    result = invoke(["validate", "--json", bad])
    assert result.exit_code == 1
    [entry] = json.loads(result.stdout)
    assert entry["ok"] is False and entry["file"] == str(bad)
    assert entry["error"].startswith(f"{bad}:2: train.epochs: ")


# ---------------------------------------------------------------- --set on the command line

@pytest.mark.parametrize("override, message", [
    ("model.layers[9].units=3", "--set model.layers[9].units=3: no list item model.layers[9]"),
    ("model.layers[0].type.x=3", "--set model.layers[0].type.x=3: model.layers[0].type is not a mapping"),
    ("model.input_shape.h=3", "--set model.input_shape.h=3: model.input_shape is not a mapping"),
    ("train.epochs=[1", "--set train.epochs=[1: invalid YAML: "),
])
def test_set_that_does_not_fit_the_config(tmp_path, override, message):
    path = tmp_path / "ok.yaml"
    path.write_text(OK_MODEL)
    assert_error(invoke(["summary", path, "--set", override]), [f"Error: {message}"])


@pytest.mark.parametrize("override, message", [  # a malformed command line: a usage error, exit 2
    ("train.epochs", "`train.epochs`: expected KEY.PATH=VALUE"),
    ("=3", "`=3`: the key path is empty"),
    ("model.layers[x].units=3", "`model.layers[x].units=3`: `[x]` is not a list index"),
])
def test_bad_set_syntax(tmp_path, override, message):
    path = tmp_path / "ok.yaml"
    path.write_text(OK_MODEL)
    result = invoke(["summary", path, "--set", override])
    assert result.exit_code == 2, result.stderr
    assert f"Invalid value for '--set': {message}" in " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())


@pytest.mark.parametrize("override, fragment", [
    ("train.epochs=ten", "train.epochs: input should be a valid integer, unable to parse string as an integer, "
                         "got 'ten'"),
    ("train.epochs.count=3", "train.epochs: input should be a valid integer, got {'count': 3}"),
])
def test_set_value_is_validated_like_the_file(tmp_path, override, fragment):
    path = tmp_path / "ok.yaml"
    path.write_text(OK_MODEL)
    # Named by the option, not the file: the value came from the command line.
    assert_error(invoke(["validate", path, "--set", override]), [f"Error: --set {override}: {fragment}"])


def base_data() -> dict:
    return yaml.safe_load(OK_MODEL + "train:\n  epochs: 10\n  optimizer: {type: Adam}\n")


@pytest.mark.parametrize("override, path, expected", [
    ("train.epochs=3", ("train", "epochs"), 3),
    ("train.optimizer.learning_rate=0.01", ("train", "optimizer", "learning_rate"), 0.01),
    ("train.optimizer.learning_rate=1e-3", ("train", "optimizer", "learning_rate"), 0.001),
    ("deterministic=true", ("deterministic",), True),
    ("name=my run", ("name",), "my run"),
    ("name='007'", ("name",), "007"),
    ("data.image_size=null", ("data", "image_size"), None),
    ("model.input_shape=[32, 32, 3]", ("model", "input_shape"), [32, 32, 3]),
    ("model.input_shape[2]=3", ("model", "input_shape"), [8, 8, 3]),
    ("model.layers[1].units=7", ("model", "layers", 1, "units"), 7),
    ("model.layers[-1].activation=softmax", ("model", "layers", 1, "activation"), "softmax"),
    ("model.layers[0]={type: Dense, units: 5}", ("model", "layers", 0), {"type": "Dense", "units": 5}),
    ("train.early_stopping.patience=5", ("train", "early_stopping"), {"patience": 5}),
    ("runtime.device = cpu", ("runtime", "device"), "cpu"),
])
def test_apply_overrides_typed_values(override, path, expected):
    data, lines = base_data(), {}
    apply_overrides(data, [override], lines)
    node = data
    for step in path:
        node = node[step]
    assert node == expected and type(node) is type(expected)
    assert 0 in lines.values()  # line 0 marks a value from the command line


def test_apply_overrides_in_order_and_validates():
    data = base_data()
    apply_overrides(data, ["train.epochs=3", "train.epochs=4", "seed=7"], {})
    cfg = config_from_dict(data)
    assert (cfg.train.epochs, cfg.seed) == (4, 7)


def test_apply_overrides_errors_are_config_errors():
    with pytest.raises(ConfigError, match=r"--set model.layers\[5\].units=1: no list item model.layers\[5\]"):
        apply_overrides(base_data(), ["model.layers[5].units=1"], {})


# ---------------------------------------------------------------- validate --print

def test_validate_print_outputs_a_config_that_revalidates(tmp_path):
    path = tmp_path / "orig.yaml"
    path.write_text("seed: 3\n" + OK_MODEL.replace("{type: Flatten}", "{type: Conv2D, filters: 4, kernel_size: 3}")
                    .replace("units: 2}", "units: 2}\n    - {type: Flatten}\n"
                                          "    - {type: Dense, units: 3, activation: softmax}"))
    first = invoke(["validate", "--print", path, "--set", "train.epochs=3", "--set", "name=resolved"])
    assert first.exit_code == 0, first.stderr
    header, _, printed = first.stdout.partition("\n")
    assert header.startswith(f"ok      {path}  (")
    resolved = yaml.safe_load(printed)
    assert resolved["name"] == "resolved" and resolved["seed"] == 3 and resolved["train"]["epochs"] == 3
    assert resolved["model"]["layers"][0] == {"type": "Conv2D", "filters": 4, "kernel_size": 3}
    assert set(resolved) == {"name", "seed", "deterministic", "data", "model", "train", "evaluate", "runtime"}

    again = tmp_path / "resolved.yaml"
    again.write_text(printed)
    second = invoke(["validate", "--print", again])
    assert second.exit_code == 0, second.stderr
    assert second.stdout.partition("\n")[2] == printed  # resolving is idempotent
    assert header.split("(")[1] == second.stdout.partition("\n")[0].split("(")[1]  # same parameter count
