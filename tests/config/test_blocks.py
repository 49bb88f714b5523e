"""`model.blocks` and graph wiring: expansion, names, per-copy arguments, errors, shipped block configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import load_config
from cnncli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

STAGE = """\
model:
  input_shape: [32, 32, 3]
  blocks:
    basic:
      params: {filters: null, strides: 1}
      layers:
        - {type: Conv2D, name: conv1, filters: $filters, kernel_size: 3, strides: $strides, padding: same}
        - type: ReLU
        - {type: Conv2D, name: conv2, filters: "${filters}", kernel_size: 3, padding: same}
  layers:
    - {type: Conv2D, filters: 8, kernel_size: 3, padding: same}
    - {type: basic, name: stage2, filters: FILTERS, strides: [2, 1, 1], repeat: 3}
    - {type: GlobalAveragePooling2D}
    - {type: Dense, units: 6, activation: softmax}
"""


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_repeat_expands_copies_with_per_copy_arguments_and_stable_names(tmp_path):
    cfg = load_config(write(tmp_path, STAGE.replace("FILTERS", "16")))
    layers = cfg.model.layers
    convs = [layer for layer in layers if layer.name and layer.name.startswith("stage2_")]
    assert [layer.name for layer in convs] == [f"stage2_{c}_{n}" for c in (1, 2, 3)
                                               for n in ("conv1", "re_lu", "conv2")]
    assert [layer.args.get("strides") for layer in convs if layer.name.endswith("conv1")] == [2, 1, 1]
    assert {layer.args.get("filters") for layer in convs if layer.type == "Conv2D"} == {16}
    assert all(layer.inputs is None for layer in layers)  # a plain chain: nothing to wire by name
    assert cfg._groups["stage2_3_conv2"] == ("stage2", "basic ×3")


def test_error_inside_the_second_copy_names_the_block_line_and_the_use_line(tmp_path):
    path = write(tmp_path, STAGE.replace("FILTERS", "16").replace("strides: [2, 1, 1]", "strides: [2, -1, 1]"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(
        f"Error: {path}:7: model.blocks.basic.layers[0].strides: must be greater than 0, got -1"), line
    assert line.endswith(f"(copy 2 of block `basic` used by model.layers[1] at {path}:12)"), line


def test_block_parameter_errors_point_at_the_use(tmp_path):
    text = STAGE.replace("filters: FILTERS, ", "filtres: 8, ")
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    message = str(info.value)
    assert "c.yaml:12: model.layers[1].filtres: block `basic` has no parameter `filtres` (did you mean `filters`?)" \
        in message
    assert "c.yaml:12: model.layers[1]: block `basic` needs `filters`" in message
    text = STAGE.replace("FILTERS", "16").replace("strides: $strides", "strides: $stride")
    with pytest.raises(ConfigError, match=r"c\.yaml:7: model\.blocks\.basic\.layers\[0\]\.strides: unknown parameter "
                                          r"`\$\{stride\}` \(did you mean `strides`\?\)"):
        load_config(write(tmp_path, text))
    text = STAGE.replace("FILTERS", "16").replace("[2, 1, 1]", "[2, 1]")
    with pytest.raises(ConfigError, match=r"c\.yaml:12: model\.layers\[1\]\.strides: `strides` lists 2 values "
                                          r"for 3 copies"):
        load_config(write(tmp_path, text))


RESIDUAL = """\
model:
  input_shape: [16, 16, 1]
  blocks:
    res:
      params: {filters: null, strides: 1, project: false}
      layers:
        - {type: Conv2D, name: conv, filters: $filters, kernel_size: 3, strides: $strides, padding: same}
        - {type: Conv2D, name: proj, inputs: [input], when: $project, filters: $filters, kernel_size: 1,
           strides: $strides}
        - {type: BatchNormalization, name: proj_bn}
        - {type: Add, name: add, shortcut: proj_bn}
  layers:
    - {type: Conv2D, name: stem, filters: 4, kernel_size: 3, padding: same}
    - {type: res, name: s, filters: [8, 8], strides: [2, 1], project: [true, false], repeat: 2}
    - {type: Flatten}
    - {type: Dense, units: 2, activation: softmax}
"""


def test_shortcut_side_branch_and_when(tmp_path):
    cfg = load_config(write(tmp_path, RESIDUAL))
    specs = {layer.name: layer for layer in cfg.model.layers if layer.name}
    # copy 1: the side branch proj → proj_bn starts at the block input and does not continue the main path
    assert specs["s_1_proj"].inputs == ["stem"] and specs["s_1_proj_bn"].inputs is None
    assert specs["s_1_add"].inputs == ["s_1_conv", "s_1_proj_bn"]
    # copy 2: proj is left out, so proj_bn reads what proj would have read, the copy's input
    assert "s_2_proj" not in specs and specs["s_2_proj_bn"].inputs == ["s_1_add"]
    assert specs["s_2_add"].inputs == ["s_2_conv", "s_2_proj_bn"]
    assert [(x.type, x.name, x.inputs) for x in cfg.model.layers[-3:-1]] == [
        ("Add", "s_2_add", ["s_2_conv", "s_2_proj_bn"]), ("Flatten", None, None)]
    result = runner.invoke(app, ["summary", "--json", str(write(tmp_path, RESIDUAL))])
    assert result.exit_code == 0, result.stderr
    names = [row["name"] for row in json.loads(result.stdout)["layers"]]
    assert names.index("s_2_add") == names.index("flatten") - 1


def test_layer_without_inputs_takes_the_main_path_not_a_side_branch(tmp_path):
    text = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Conv2D, name: a, filters: 4, kernel_size: 3, padding: same}
    - {type: Conv2D, name: side, filters: 4, kernel_size: 1, inputs: [input]}
    - {type: Add, name: join, shortcut: side}
    - {type: Flatten}
    - {type: Dense, units: 2, activation: softmax}
"""
    cfg = load_config(write(tmp_path, text))
    assert [(layer.name, layer.inputs) for layer in cfg.model.layers[:3]] == [
        ("a", None), ("side", ["input"]), ("join", ["a", "side"])]


def test_inputs_listed_twice_call_a_layer_with_several_arguments(tmp_path):
    text = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Reshape, target_shape: [64, 1]}
    - {type: Dense, name: tokens, units: 8}
    - {type: MultiHeadAttention, name: attention, num_heads: 2, key_dim: 4, inputs: [tokens, tokens]}
    - {type: GlobalAveragePooling1D}
    - {type: Dense, units: 3, activation: softmax}
"""
    result = runner.invoke(app, ["summary", "--json", str(write(tmp_path, text))])
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["layers"]}
    assert rows["attention"]["output_shape"] == [None, 64, 8]
    assert rows["attention"]["params"] == 4 * (8 * 2 * 4 + 2 * 4)  # query, key, value, output: 8 → 2 heads × 4


def _keras_resnet20():
    """ResNet-20 v1 as the Keras CIFAR-10 example writes it: conv-BN-ReLU, 1×1 projection when the stride is 2."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel_size=3, strides=1, activation=True):
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", kernel_initializer="he_normal",
                          kernel_regularizer=keras.regularizers.l2(1e-4))(x)
        x = layers.BatchNormalization()(x)
        return layers.Activation("relu")(x) if activation else x

    inputs = keras.Input((32, 32, 3))
    x = conv_bn(inputs, 16)
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, filters, strides=strides)
            y = conv_bn(y, filters, activation=False)
            if strides == 2:
                x = layers.Conv2D(filters, 1, strides=2, padding="same", kernel_initializer="he_normal",
                                  kernel_regularizer=keras.regularizers.l2(1e-4))(x)
            x = layers.Activation("relu")(layers.add([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10, activation="softmax")(x))


def test_resnet20_config_matches_a_plain_keras_resnet20():
    import keras

    path = ROOT / "configs" / "resnet20_cifar.yaml"
    assert len(path.read_text().splitlines()) <= 40
    reference = _keras_resnet20()
    trainable = sum(int(keras.ops.size(w)) for w in reference.trainable_weights)
    result = runner.invoke(app, ["summary", "--json", str(path)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["total_params"], doc["trainable_params"]) == (reference.count_params(), trainable) == (274_442, 273_066)
    assert doc["blocks"]["stage2_1_proj"] == "stage2"


def test_convmixer_config_is_short_and_repeats_its_block():
    path = ROOT / "configs" / "convmixer.yaml"
    assert len(path.read_text().splitlines()) <= 40
    names = [layer.name for layer in load_config(path).model.layers]
    assert [n for n in names if n and n.endswith("_residual")] == [f"mix_{i}_residual" for i in range(1, 9)]


def test_summary_folds_block_uses_unless_expanded():
    path = str(ROOT / "configs" / "resnet20_cifar.yaml")
    folded = runner.invoke(app, ["summary", path], env={"COLUMNS": "200"}).stdout
    assert "stage2 " in folded and "basic ×3" in folded and "stage2_1_a_conv" not in folded
    expanded = runner.invoke(app, ["summary", "--expand", path], env={"COLUMNS": "200"}).stdout
    assert "stage2_1_a_conv" in expanded and "basic ×3" not in expanded


def test_trainable_on_a_use_and_phases_naming_a_block(tmp_path):
    """`trainable: false` on a use freezes its layers; a from_run phase can unfreeze a block by its use name."""
    source = write(tmp_path, RESIDUAL.replace("repeat: 2}", "repeat: 2, trainable: false}")
                   .replace("input_shape: [16, 16, 1]", "input_shape: [32, 32, 1]")
                   .replace("units: 2,", "units: 6,").replace("name: s,", "name: stage,"), "source.yaml")
    doc = json.loads(runner.invoke(app, ["summary", "--json", str(source)]).stdout)
    frozen = sum(row["params"] for row in doc["layers"] if row["name"].startswith("stage_"))
    assert frozen > 0 and doc["non_trainable_params"] == frozen
    result = runner.invoke(app, ["train", str(source), "--smoke", "--quiet", "--output", str(tmp_path / "runs"),
                                 "--set", "model.layers[1].trainable=true"])
    assert result.exit_code == 0, result.stderr
    run_dir = result.stdout.strip().splitlines()[-1]
    reuse = write(tmp_path, f"""\
model:
  backbone: {{from_run: {run_dir}, layers_until: stage_2_add}}
  layers: [{{type: Flatten}}, {{type: Dense, units: 6, activation: softmax}}]
train:
  phases: [{{epochs: 1, trainable: head}}, {{epochs: 1, trainable: [stage]}}]
""", "reuse.yaml")
    result = runner.invoke(app, ["summary", "--json", str(reuse)])
    assert result.exit_code == 0, result.stderr
    phases = json.loads(result.stdout)["phases"]
    unfrozen = phases[1]["trainable_params"] - phases[0]["trainable_params"]
    block = sum(row["params"] for row in doc["layers"] if row["name"].startswith("stage_") and "bn" not in row["name"])
    assert unfrozen == block  # the block `s`, batch norms kept frozen as in every partly frozen backbone


def test_runaway_repeats_are_refused_quickly(tmp_path):
    text = """\
model:
  blocks:
    a: {layers: [{type: ReLU}, {type: ReLU}]}
    b: {layers: [{type: a, repeat: 100}]}
    c: {layers: [{type: b, repeat: 100}]}
  layers:
    - {type: c, repeat: 100}
    - {type: a, repeat: 1000000000}
"""
    with pytest.raises(ConfigError, match=r"c\.yaml:3: model\.blocks\.a\.layers\[0\]: the blocks expand to more "
                                          r"than 5,000 layers"):
        load_config(write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"c\.yaml:7: model\.layers\[0\]\.repeat: `repeat` is 1,000,000,000"):
        load_config(write(tmp_path, text.replace("    - {type: c, repeat: 100}\n", "")))


def test_block_uses_are_referred_to_by_name_and_unknown_names_are_errors(tmp_path):
    text = STAGE.replace("FILTERS", "16").replace(
        "    - {type: GlobalAveragePooling2D}\n",
        "    - {type: Conv2D, name: side, filters: 4, kernel_size: 1, inputs: [stage2_1]}\n"
        "    - {type: GlobalAveragePooling2D, inputs: [stage2]}\n")
    layers = load_config(write(tmp_path, text)).model.layers
    assert [(x.name, x.inputs) for x in layers[-3:-1]] == [("side", ["stage2_1_conv2"]),
                                                           (None, ["stage2_3_conv2"])]
    with pytest.raises(ConfigError, match=r"c\.yaml:14: model\.layers\[3\]\.inputs\[0\]: `stage3` is not a layer "
                                          r"named earlier \(did you mean `stage2"):
        load_config(write(tmp_path, text.replace("inputs: [stage2]", "inputs: [stage3]")))
