"""The JSON Schema of a config: shipped, fresh, and what editors check shipped configs against."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.schema_export import SCHEMA_FILE, schema_text
from cnncli.config.yamlio import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
runner = CliRunner()


@pytest.fixture(scope="module")
def validator():
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0, result.stderr
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator, text: str) -> list[str]:
    data, _ = parse_yaml(text)  # cnncli's own reading (1e-4 is a number)
    return [e.message for e in validator.iter_errors(data)]


def test_shipped_schema_is_fresh():
    assert SCHEMA_FILE.read_text() == schema_text(), "stale: run `cnn schema --output cnncli/schema/cnncli.schema.json`"


def test_schema_output_option(tmp_path):
    result = runner.invoke(app, ["schema", "--output", str(tmp_path / "s.json")])
    assert result.exit_code == 0 and (tmp_path / "s.json").read_text() == SCHEMA_FILE.read_text()


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(ROOT)) for p in SHIPPED])
def test_shipped_config_validates_against_the_schema_it_names(path, validator):
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert match, f"{path} must start with the yaml-language-server schema line"
    assert (path.parent / match.group(1)).resolve() == SCHEMA_FILE
    assert errors(validator, path.read_text()) == []


def test_schema_has_descriptions_defaults_and_layer_arguments(validator):
    schema = validator.schema
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert train["batch_size"]["default"] == 32 and "replicas" in train["batch_size"]["description"]
    conv = schema["$defs"]["layer.Conv2D"]
    assert conv["properties"]["type"]["enum"] == ["Conv2D", "conv2d"]
    assert conv["properties"]["padding"]["default"] == "valid"
    assert conv["additionalProperties"] is False
    assert "negative_slope" in schema["$defs"]["layer.LeakyReLU"]["properties"]
    assert "alpha" in schema["$defs"]["layer.LeakyReLU"]["properties"]  # still accepted by Keras
    assert "Lambda" not in json.dumps(schema["$defs"]["BlockUse"])


@pytest.mark.parametrize("text, fragment", [
    ("trian: {epochs: 2}", "'trian' was unexpected"),
    ("data: {datset: mnist}", "'datset' was unexpected"),
    ("model: {layers: [{type: Conv2D, filtrs: 3, kernel_size: 3}]}", "is not valid under any of the given schemas"),
    ("model: {blocks: {b: {layers: [{type: Dense, unit: 3}]}}, layers: [{type: b}]}",
     "is not valid under any of the given schemas"),
    ("model: {blocks: {b: {layer: []}}}", "'layer' was unexpected"),
    ("train: {epochs: zero}", "is not of type 'integer'"),
])
def test_typos_fail_schema_validation(validator, text, fragment):
    found = errors(validator, text)
    assert any(fragment in message for message in found), found


def test_language_keys_pass_schema_validation(validator):
    text = """\
extends: base.yaml
model:
  input_shape: [28, 28]
  blocks:
    b: {params: {units: 8}, layers: [{type: Dense, units: $units, when: true}, {type: Add, shortcut: input}]}
  layers:
    - {type: b, units: [4, 8], repeat: 2}
    - {type: LeakyReLU, alpha: 0.1}
    - {type: Dense, units: 2, kernel_regularizer: {l2: 1e-4}}
"""
    assert errors(validator, text) == []


def test_every_config_key_has_a_description(validator):
    """A new key in config.py needs the comment beside it that editors show (or a Field description)."""
    schema = validator.schema
    owners = [("", schema)] + [(name, d) for name, d in schema["$defs"].items() if not name.startswith("layer.")]
    missing = [f"{owner}.{key}".lstrip(".") for owner, d in owners
               for key, prop in d.get("properties", {}).items() if "description" not in prop]
    assert missing == []
