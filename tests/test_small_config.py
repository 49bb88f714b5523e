"""The one small config most tests train (helpers.small_config) is a valid config and takes changes as documented."""

from __future__ import annotations

import yaml
from helpers import small_config
from typer.testing import CliRunner

from cnncli.cli import app


def test_the_small_config_validates_and_ends_in_one_unit_per_class(tmp_path):
    config = yaml.safe_load(small_config({"data.shapes.classes": ["x", "o", "square"]}))
    assert config["model"]["layers"][-1] == {"type": "Dense", "units": 3, "activation": "softmax"}
    (tmp_path / "c.yaml").write_text(small_config())
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output


def test_changes_set_key_paths_merge_sections_and_remove_keys():
    config = yaml.safe_load(small_config({"train.epochs": 3, "seed": None}, "train: {batch_size: 8}",
                                         {"model.layers": [{"type": "Flatten"}]}))
    assert config["train"] == {"epochs": 3, "batch_size": 8} and "seed" not in config
    assert config["model"]["layers"] == [{"type": "Flatten"}]
    assert config["data"]["shapes"]["train_examples"] == 200  # untouched keys keep their defaults
