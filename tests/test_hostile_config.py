"""Hostile configs through `cnn train`: refused in bounded memory, with one clear error line.

Tags that construct Python objects, "billion laughs" (through aliases and through
`<<` merge keys), huge and endless files, deep nesting, numbers too long to
convert, control characters, and serialized objects that would import or run
code. Nothing in a config is executed: each case also checks that its payload
left no trace.
"""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.loading import load_config
from cnncli.errors import ConfigError

runner = CliRunner()

MODEL = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Flatten}
    - {type: Dense, units: 2, activation: softmax}
"""
ALIAS_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))
MERGE_LAUGHS = "l0: &l0 {" + ", ".join(f"k{i}: {i}" for i in range(10)) + "}\n" + "".join(
    f"l{i}: &l{i}\n  <<: [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))
PAYLOAD = "{dir}/pwned"  # what the code-running cases would create, were anything run

# id -> (file contents, fragments of the one-line error; "{file}" is the config's path)
CASES = {
    "python-object-apply": (f"name: !!python/object/apply:os.system ['touch {PAYLOAD}']\n" + MODEL,
                            ["{file}:1: name: tag `!!python/object/apply:os.system` is not allowed; "
                             "configs hold plain values only (nothing is constructed or executed from YAML)"]),
    "python-object-on-mapping": ("model: !!python/object/new:os.system {args: ['touch " + PAYLOAD + "']}\n",
                                 ["{file}:1: model: tag `!!python/object/new:os.system` is not allowed"]),
    "python-name": ("seed: !!python/name:os.system\n" + MODEL, ["{file}:1: seed: tag `!!python/name:os.system`"]),
    "python-tag-in-a-list": (MODEL.replace("{type: Flatten}", f"!!python/object/apply:os.system ['touch {PAYLOAD}']"),
                             ["{file}:4: model.layers[0]: tag `!!python/object/apply:os.system` is not allowed"]),
    "local-tag": ("name: !shell rm -rf /\n" + MODEL, ["{file}:1: name: tag `!shell` is not allowed"]),
    "billion-laughs-aliases": (ALIAS_LAUGHS, ["the document is too large or too deeply nested (over 200,000 values"]),
    "billion-laughs-merge-keys": (MERGE_LAUGHS,
                                  ["the document is too large or too deeply nested (over 200,000 values"]),
    "deep-flow-nesting": ("model: " + "[" * 50_000 + "]" * 50_000 + "\n",
                          ["{file}: the document is nested too deeply (more than 64 levels)"]),
    "deep-block-nesting": ("".join("  " * i + f"k{i}:\n" for i in range(900)) + "  " * 900 + "1\n",
                           ["{file}: the document is nested too deeply (more than 64 levels)"]),
    "block-nesting-just-past-the-limit": ("".join("  " * i + f"k{i}:\n" for i in range(70)) + "  " * 70 + "1\n",
                                          ["{file}:66: k0.k1: the document is too large or too deeply nested"]),
    "number-too-long": ("seed: " + "9" * 10_000 + "\n" + MODEL,
                        ["{file}:1: seed: cannot read the value `999999999", "Exceeds the limit (4300 digits)"]),
    "impossible-date": ("name: 2024-13-45\n" + MODEL, ["{file}:1: name: cannot read the value `2024-13-45`: "
                                                      "month must be in 1..12"]),
    "control-character": ("name: a\x01b\n" + MODEL, ["{file}: invalid YAML: unacceptable character #x0001"]),
    "merge-of-a-scalar": ("data:\n  <<: 3\n" + MODEL, ["{file}:2: data: `<<` merges mappings (or a list of "
                                                       "mappings) only"]),
    "lambda-layer": (MODEL.replace("{type: Flatten}", "{type: Lambda, function: print}"),
                     ["{file}:4: model.layers[0].type: layer type `Lambda` is not allowed in a config: "
                      "it runs arbitrary Python code; use built-in layers"]),
    "serialized-function-from-os": (
        MODEL.replace("activation: softmax", "activation: {module: os, class_name: function, config: system}"),
        ["{file}:5: model.layers[1].activation: an object from module `os` is not allowed in a config: "
         "nothing is imported or run from YAML"]),
    "serialized-class-from-subprocess": (
        MODEL.replace("activation: softmax", "kernel_initializer: {module: subprocess, class_name: Popen, "
                                             "config: {args: 'touch " + PAYLOAD + "'}}"),
        ["{file}:5: model.layers[1].kernel_initializer: an object from module `subprocess` is not allowed"]),
    "serialized-lambda-bytecode": (
        MODEL.replace("activation: softmax", "activation: {class_name: __lambda__, config: {code: 4wEAAAA=}}"),
        ["{file}:5: model.layers[1].activation: Python bytecode (a lambda) is not allowed in a config"]),
    "serialized-schedule-from-builtins": (
        MODEL + "train:\n  optimizer: {type: SGD, learning_rate: {module: builtins, class_name: function, "
                "config: eval}}\n",
        ["{file}:7: train.optimizer.learning_rate: an object from module `builtins` is not allowed"]),
}


@pytest.fixture(scope="module", autouse=True)
def _imports_done(tmp_path_factory):
    """TensorFlow and Keras imported before any case's memory is traced."""
    path = tmp_path_factory.mktemp("warm") / "ok.yaml"
    path.write_text(MODEL)
    assert invoke(["validate", path]).exit_code == 0


def invoke(args: list) -> object:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def assert_one_error(result, fragments: list[str]) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_config_is_refused_by_cnn_train(tmp_path, case):
    text, fragments = CASES[case]
    path = tmp_path / "hostile.yaml"
    path.write_text(text.replace("{dir}", str(tmp_path)))
    result = invoke(["train", path, "-o", tmp_path / "runs", "-q"])
    assert_one_error(result, [f.replace("{file}", str(path)) for f in fragments])  # memory: see below
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "runs").exists()  # refused before any run directory is made


@pytest.mark.parametrize("case", ["billion-laughs-aliases", "billion-laughs-merge-keys", "deep-flow-nesting"])
def test_expansion_is_refused_within_bounded_memory(case):
    from cnncli.config.yamlio import parse_yaml

    tracemalloc.start()
    try:
        with pytest.raises(ConfigError):
            parse_yaml(CASES[case][0])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, f"{case}: {peak / 2**20:.0f} MB"  # 10^10 values, were they expanded


def test_a_100_mb_config_is_refused_without_being_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.truncate(100 * 2**20)  # sparse: 100 MB that cost nothing to make
    # The size from stat(): a file that had been read would say "file is over 1,000,000 bytes".
    assert_one_error(invoke(["train", path, "-q"]),
                     [f"Error: {path}: file is 104,857,600 bytes; configs are limited to 1,000,000 bytes"])


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/urandom"])
def test_an_endless_device_as_config_is_refused(device):
    if not Path(device).exists():
        pytest.skip(f"no {device}")
    assert_one_error(invoke(["train", device, "-q"]),
                     [f"Error: {device}: is not a regular file (a device, pipe or socket); expected a YAML file"])


def test_a_fifo_as_config_does_not_block(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(result=invoke(["validate", fifo])), daemon=True)
    worker.start()
    worker.join(timeout=30)
    if worker.is_alive():  # blocked opening the FIFO: release it so the thread can end, then fail
        with open(fifo, "w"):
            pass
        pytest.fail("cnn validate blocked reading a FIFO")
    assert_one_error(outcome["result"], [f"Error: {fifo}: is not a regular file"])


def test_a_hostile_override_on_the_command_line_is_refused(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(MODEL)
    result = invoke(["train", path, "--set", f"name=!!python/object/apply:os.system ['touch {tmp_path}/pwned']",
                     "-o", tmp_path / "runs", "-q"])
    assert_one_error(result, ["Error: --set name=!!python/object/apply:os.system", "is not allowed"])
    assert not (tmp_path / "pwned").exists()


def test_binary_and_non_utf8_files_are_refused(tmp_path):
    binary, latin = tmp_path / "a.yaml", tmp_path / "b.yaml"
    binary.write_bytes(b"model:\x00\x01\x02")
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_one_error(invoke(["validate", binary]), [f"Error: {binary}: is a binary file, not YAML text"])
    assert_one_error(invoke(["validate", latin]), [f"Error: {latin}: is not UTF-8 text (byte 9)"])


def test_merge_keys_let_own_keys_override(tmp_path):
    """Not hostile, but the merge rewrite must keep YAML's semantics: own keys win, first source wins."""
    path = tmp_path / "merge.yaml"
    path.write_text("x-conv: &conv {type: Conv2D, filters: 4, kernel_size: 3}\n"
                    "x-wide: &wide {filters: 8, padding: same}\n"
                    "model:\n  input_shape: [8, 8, 1]\n  layers:\n"
                    "    - {<<: [*wide, *conv], kernel_size: 5}\n"
                    "    - {type: Flatten}\n    - {type: Dense, units: 2}\n")
    data = path.read_text()
    from cnncli.config.yamlio import parse_yaml

    parsed, _ = parse_yaml(data)
    assert parsed["model"]["layers"][0] == {"type": "Conv2D", "filters": 8, "padding": "same", "kernel_size": 5}
    with pytest.raises(ConfigError, match="unknown key `x-conv`"):
        load_config(path)  # the anchors' own keys are not config keys: the usual error, not a crash
