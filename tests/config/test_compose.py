"""Composition: `extends` chains, several configs on the command line, `cnn config`, paths relative to a file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import load_config
from cnncli.errors import ConfigError

runner = CliRunner()

LAYERS = "  layers:\n    - {type: Flatten}\n    - {type: Dense, units: 6, activation: softmax}\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def chain(tmp_path):
    """grand.yaml ← base/base.yaml ← exp/child.yaml, each `extends` relative to its own folder."""
    write(tmp_path / "grand.yaml", "seed: 1\ndata:\n  dataset: shapes\n  validation_split: 0.2\n"
          "train:\n  epochs: 3\n  batch_size: 16\n  metrics: [accuracy, top_5_accuracy]\nmodel:\n" + LAYERS)
    write(tmp_path / "base" / "base.yaml", "extends: ../grand.yaml\nseed: 2\n"
          "train:\n  epochs: 5\n  optimizer: {type: SGD, learning_rate: 0.1}\n")
    return write(tmp_path / "exp" / "child.yaml", "extends: ../base/base.yaml\nname: child\n"
                 "train:\n  metrics: [accuracy]\n  optimizer: {learning_rate: 0.01}\n")


def test_extends_chain_merges_mappings_and_replaces_lists(chain):
    cfg = load_config(chain)
    assert cfg.name == "child" and cfg.seed == 2  # later files win
    assert cfg.data.validation_split == 0.2 and cfg.train.batch_size == 16  # set only in the first: kept
    assert cfg.train.epochs == 5
    assert cfg.train.optimizer.type == "SGD" and cfg.train.optimizer.args == {"learning_rate": 0.01}  # deep merge
    assert cfg.train.metrics == ["accuracy"]  # a list is replaced whole, not spliced
    assert [layer.type for layer in cfg.model.layers] == ["Flatten", "Dense"]


def test_extends_list_merges_left_to_right(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\ntrain: {epochs: 2}\nmodel:\n" + LAYERS)
    write(tmp_path / "b.yaml", "seed: 3\ntrain: {batch_size: 8}\n")
    cfg = load_config(write(tmp_path / "c.yaml", "extends: [a.yaml, b.yaml]\n"))
    assert (cfg.seed, cfg.train.epochs, cfg.train.batch_size) == (3, 2, 8)


def test_extends_cycle_names_the_chain(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: sub/c.yaml\n")
    write(tmp_path / "sub" / "c.yaml", "extends: ../a.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "a.yaml")
    message = str(info.value)
    assert "`extends` makes a cycle" in message
    names = message.split("cycle: ")[1].split(" → ")
    assert [Path(n).name for n in names] == ["a.yaml", "b.yaml", "c.yaml", "a.yaml"]
    assert str(tmp_path / "sub" / "c.yaml") + ":1" in message  # where the cycle closes


def test_missing_base_is_an_error_at_the_extends_line(tmp_path):
    path = write(tmp_path / "a.yaml", "seed: 1\nextends: nope.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml:2: extends: `extends`: no such file .*nope\.yaml"):
        load_config(path)


def test_error_in_a_base_value_points_at_the_base_file_and_line(chain, tmp_path):
    grand = tmp_path / "grand.yaml"
    grand.write_text(grand.read_text().replace("batch_size: 16", "batch_size: -4"))
    result = runner.invoke(app, ["validate", str(chain)])
    assert result.exit_code == 1
    assert f"{grand}:7: train.batch_size: input should be greater than or equal to 1" in result.stderr
    result = runner.invoke(app, ["validate", "--format", "github", str(chain)])
    assert f"::error file={grand},line=7::train.batch_size: input should be" in result.stdout


def test_layer_argument_error_in_a_base_points_at_the_base(tmp_path):
    base = write(tmp_path / "base.yaml", "model:\n  layers:\n    - {type: Flatten}\n"
                 "    - {type: Dense, unitz: 6, activation: softmax}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\nseed: 4\n")
    result = runner.invoke(app, ["validate", str(child)])
    assert f"{base}:4: model.layers[1].unitz: Dense takes no argument `unitz` (did you mean `units`?)" \
        in result.stderr


def test_several_configs_on_the_command_line_merge_left_to_right(chain, tmp_path):
    extra = write(tmp_path / "fast.yaml", "train: {epochs: 1}\nseed: 9\n")
    result = runner.invoke(app, ["config", "--json", str(chain), str(extra), "--set", "train.batch_size=4"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["seed"], doc["train"]["epochs"], doc["train"]["batch_size"]) == (9, 1, 4)
    assert doc["name"] == "child" and doc["train"]["optimizer"] == {"type": "SGD", "learning_rate": 0.01}
    assert "extends" not in doc
    result = runner.invoke(app, ["config", str(chain)])
    assert yaml.safe_load(result.stdout)["train"]["epochs"] == 5  # YAML by default, what a run stores


def test_paths_are_relative_to_the_file_that_sets_them(tmp_path, monkeypatch):
    write(tmp_path / "data" / "base.yaml", "data: {dataset: npz, path: arrays.npz}\nmodel:\n" + LAYERS)
    child = write(tmp_path / "exp" / "child.yaml", "extends: ../data/base.yaml\n"
                  "model:\n  backbone: {from_run: ../runs/r1, trainable: false}\n")
    monkeypatch.chdir(tmp_path / "exp")
    cfg = load_config("child.yaml")
    assert cfg.data.path == str(tmp_path / "data" / "arrays.npz")
    assert cfg.model.backbone.from_run == str(tmp_path / "runs" / "r1")
    cfg = load_config(child, ["data.path=here.npz"])  # the command line is relative to where it runs
    assert cfg.data.path == "here.npz"
    weights = write(tmp_path / "w" / "c.yaml", "model:\n  backbone: {name: VGG16, weights: vgg.weights.h5}\n"
                    "  layers: [{type: Flatten}]\n")
    assert load_config(weights).model.backbone.weights == str(tmp_path / "w" / "vgg.weights.h5")
    assert load_config(weights, ["model.backbone.weights=imagenet"]).model.backbone.weights == "imagenet"
    absolute = write(tmp_path / "abs.yaml", f"data: {{dataset: npz, path: {tmp_path}/x.npz}}\nmodel:\n" + LAYERS)
    assert load_config(absolute).data.path == f"{tmp_path}/x.npz"
    assert os.path.isabs(load_config(chain_free(tmp_path)).data.path)


def chain_free(tmp_path: Path) -> Path:
    return write(tmp_path / "deep" / "er" / "c.yaml", "data: {dataset: idx, path: ../mnist}\nmodel:\n" + LAYERS)


KEYS = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.recursive(st.one_of(st.none(), st.integers(), st.lists(st.integers(), max_size=2)),
                      lambda inner: st.dictionaries(KEYS, inner, max_size=3), max_leaves=8)
DOCS = st.dictionaries(KEYS, VALUES, max_size=4)


def _lines(doc, path=()):
    out = {path: len(path)} if path else {}
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.update(_lines(value, path + (key,)))
    return out


@given(DOCS, DOCS)
def test_merge_properties(base, over):
    from cnncli.config.compose import merge

    merged, lines = merge(base, _lines(base), over, _lines(over))
    assert set(merged) == set(base) | set(over)
    for key, value in over.items():
        if not (isinstance(value, dict) and isinstance(base.get(key), dict)):
            assert merged[key] == value  # the later file wins whole: lists are never spliced
    for key, value in base.items():
        if key not in over:
            assert merged[key] == value
    assert merge(merged, lines, {}, {})[0] == merged  # an empty file adds nothing
    assert set(lines) == set(_lines(merged))  # every value has a line, and no line outlives its value


def test_block_from_a_base_file_errors_at_the_base_line_and_names_the_use_in_the_child(tmp_path):
    base = write(tmp_path / "lib" / "blocks.yaml", "model:\n  input_shape: [16, 16]\n  blocks:\n    down:\n"
                 "      params: {filters: null}\n      layers:\n"
                 "        - {type: Conv2D, filters: $filters, kernel_size: 3, strides: 2}\n")
    child = write(tmp_path / "net.yaml", "extends: lib/blocks.yaml\nmodel:\n  layers:\n"
                  "    - {type: down, name: d, filters: [4, 0], repeat: 2}\n"
                  "    - {type: Flatten}\n    - {type: Dense, units: 6, activation: softmax}\n")
    result = runner.invoke(app, ["validate", "--json", str(child)])
    assert result.exit_code == 1
    problem, = json.loads(result.stdout)[0]["problems"]
    assert (problem["file"], problem["line"]) == (str(base), 7)
    assert problem["message"].startswith("model.blocks.down.layers[0].filters: must be greater than 0, got 0")
    assert problem["message"].endswith(f"(copy 2 of block `down` used by model.layers[0] at {child}:4)")
