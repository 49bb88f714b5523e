"""A block parameter without default is needed only where a layer that stays uses it: a layer left out
with `when: false` (the first inverted block of MobileNetV2 has no expansion layer) needs nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnncli.config.loading import load_config
from cnncli.errors import ConfigError

MOBILENET = """\
model:
  input_shape: [32, 32, 3]
  blocks:
    inverted:
      params: {expand: null, filters: null, strides: 1, expand_layer: true}
      layers:
        - {type: Conv2D, name: expand, when: $expand_layer, filters: $expand, kernel_size: 1, use_bias: false}
        - {type: BatchNormalization, name: expand_bn, when: $expand_layer}
        - {type: ReLU, name: expand_relu, max_value: 6.0, when: $expand_layer}
        - {type: DepthwiseConv2D, name: depthwise, kernel_size: 3, strides: $strides, padding: same}
        - {type: Conv2D, name: project, filters: $filters, kernel_size: 1, use_bias: false}
        - {type: BatchNormalization, name: project_bn}
  layers:
    - {type: Conv2D, filters: 32, kernel_size: 3, strides: 2, padding: same}
    - {type: inverted, name: b0, filters: 16, expand_layer: false}
    - {type: inverted, name: b1, filters: 24, expand: 96, strides: 2}
    - {type: GlobalAveragePooling2D}
    - {type: Dense, units: 10, activation: softmax}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def errors(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return [(p.path, p.line, p.message) for p in info.value.problems]


def test_first_inverted_block_needs_no_expansion_factor(tmp_path):
    cfg = load_config(write(tmp_path, MOBILENET))
    names = [layer.name for layer in cfg.model.layers if layer.name]
    assert "b0_expand" not in names and "b0_depthwise" in names
    assert [layer.args["filters"] for layer in cfg.model.layers if layer.name == "b1_expand"] == [96]


def test_a_kept_layer_still_needs_it_once_per_use(tmp_path):
    text = MOBILENET.replace(", expand: 96", "").replace("strides: 2}\n    - {type: Global",
                                                         "strides: [2, 1], repeat: 2}\n    - {type: Global")
    assert errors(tmp_path, text) == [("model.layers[2]", 16, "block `inverted` needs `expand` "
                                                                "(its parameter has no default)")]


def test_a_copy_that_keeps_the_layer_needs_it(tmp_path):
    text = MOBILENET.replace("{type: inverted, name: b0, filters: 16, expand_layer: false}",
                             "{type: inverted, name: b0, filters: 16, expand_layer: [false, true], repeat: 2}")
    assert errors(tmp_path, text) == [("model.layers[1]", 15, "block `inverted` needs `expand` "
                                                                "(its parameter has no default)")]


def test_a_parameter_that_decides_when_is_needed_without_a_second_complaint(tmp_path):
    text = MOBILENET.replace("expand_layer: true}", "expand_layer: null}")
    assert errors(tmp_path, text) == [("model.layers[2]", 16, "block `inverted` needs `expand_layer` "
                                                                "(its parameter has no default)")]
