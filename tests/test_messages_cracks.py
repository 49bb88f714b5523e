"""Messages that must not mislead: each names the right thing (the file, the option as typed, what a file
really is) and exits with the code that means what happened: 1 for what the arguments name (files, configs,
runs, data), 2 for a malformed command line, 130 for Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
CNN = Path(sys.executable).parent / "cnn"

CONFIG = """\
# a comment, so the first key is on line 2
name: tiny
data:
  dataset: shapes
  shapes: {image_size: 8, train_examples: 40, test_examples: 10}
model:
  layers:
    - {type: Flatten}
    - {type: Dense, units: 6, activation: softmax}
"""


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    return path


def png(path: Path) -> Path:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def flat(text: str) -> str:
    """Typer's usage box, its borders and line breaks gone: one line of words."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def assert_error(result, message: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr


def assert_usage(result, message: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Usage: " in result.stderr and message in flat(result.stderr), result.stderr


# ---------------------------------------------------------------- a file that is not what its name says

@pytest.mark.parametrize("content, looks", [
    (b"hello world\n", "a text file starting `hello world`"),
    (b"", "an empty file"),
    (b"\x89HDF\r\n\x1a\n" + bytes(64), "an HDF5 file (the legacy Keras .h5 format)"),
])
def test_predict_with_a_keras_file_that_is_not_one_says_what_it_is(tmp_path, content, looks):
    model = tmp_path / "bad.keras"
    model.write_bytes(content)
    result = invoke("predict", model, png(tmp_path / "img.png"))
    assert_error(result, f"`{model}` is not a Keras model file: a .keras model is a zip archive, and this is {looks}")
    assert "File not found" not in result.stderr


# ---------------------------------------------------------------- where a config problem is

def test_validate_a_folder_without_configs_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a config")
    result = invoke("validate", tmp_path)
    assert_error(result, f"Error: {tmp_path}: a folder with no config files (*.yaml, *.yml) in it")
    assert "is a directory" not in result.stderr
    github = invoke("validate", "--format", "github", tmp_path)
    assert github.exit_code == 1
    assert f"::error file={tmp_path}::a folder with no config files (*.yaml, *.yml) in it" in github.stdout


def test_tune_without_a_search_section_names_the_file_not_a_line(config):
    result = invoke("tune", config)
    assert_error(result, f"Error: {config}: the config has no `search:` section, which cnn tune searches; add one")


def test_a_missing_section_borrows_no_line(tmp_path):
    path = tmp_path / "nomodel.yaml"
    path.write_text("# comment\nname: x\ndata: {dataset: shapes}\n")
    assert_error(invoke("validate", path), f"Error: {path}: model.layers: the model has no layers")


# ---------------------------------------------------------------- --set as typed

def test_an_empty_part_of_a_set_path_is_shown_as_typed(config):
    result = invoke("validate", config, "--set", "model..x=3")
    assert_usage(result, "Invalid value for '--set': `model..x=3`: the key path `model..x` has an empty part")
    assert "model.x:" not in result.stderr


@pytest.mark.parametrize("override", [".x=3", "model.=3"])
def test_a_dot_at_an_end_of_a_set_path_is_refused(config, override):
    assert_usage(invoke("summary", config, "--set", override), "has an empty part")


def test_a_bad_set_value_names_the_set_not_the_file(config):
    result = invoke("validate", config, "--set", "data.limit=abc")
    assert_error(result, "Error: --set data.limit=abc: data.limit: input should be a valid integer")
    assert f"{config}:" not in result.stderr
    github = invoke("validate", "--format", "github", config, "--set", "data.limit=abc")
    assert f"::error file={config}::--set data.limit=abc: data.limit: input should be" in github.stdout


def test_a_set_that_creates_a_mapping_is_named_for_what_is_wrong_below_it(config):
    result = invoke("config", config, "--set", "data.foo.bar=1")
    assert_error(result, "Error: --set data.foo.bar=1: data.foo: unknown key `foo`")


def test_evaluate_data_names_its_own_option(tmp_path):
    assert_usage(invoke("evaluate", tmp_path, "--data", "data..limit=3"), "Invalid value for '--data': `data..limit=3`")


def test_train_options_name_themselves_and_a_name_stays_text(config):
    from cnncli.train.job import TrainOptions, resolve_config

    cfg, _, _ = resolve_config(TrainOptions(config=config, name="a: b", epochs=2))
    assert (cfg.name, cfg.train.epochs) == ("a: b", 2)


def test_a_run_name_with_a_slash_builds(config):
    result = invoke("summary", config, "--set", "name=a/b", "--json")
    assert result.exit_code == 0, result.stderr


# ---------------------------------------------------------------- exit codes: 1 what the arguments name, 2 the line

def test_every_path_argument_is_left_for_cnn_to_read():
    """Typer would check readability itself (exit 2, 'is not readable'), unlike a missing file (exit 1)."""
    command = typer.main.get_command(app)
    checked = []
    for name, sub in command.commands.items():
        for leaf in getattr(sub, "commands", {name: sub}).values():
            for param in leaf.params:
                if hasattr(param.type, "readable"):
                    checked.append((leaf.name, param.name))
                    assert not param.type.readable, f"cnn {leaf.name} {param.name}"
    assert ("predict", "images") in checked and ("train", "config") in checked


def test_an_unreadable_image_is_an_error_like_a_missing_one(tmp_path, monkeypatch):
    locked = png(tmp_path / "locked.png")
    real_access, real_open = os.access, Image.open

    def access(path, mode, *args, **kwargs):  # as for mode 000 without root's override
        return False if Path(path) == locked else real_access(path, mode, *args, **kwargs)

    def open_image(path, *args, **kwargs):
        if isinstance(path, (str, Path)) and Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(Image, "open", open_image)
    model = tmp_path / "m.keras"
    model.write_bytes(b"x")
    assert_error(invoke("predict", model, locked), f"Error: {locked}: cannot read image (permission denied)")
    assert_error(invoke("predict", model, tmp_path / "gone.png"), f"Error: {tmp_path / 'gone.png'}: cannot read image")


@pytest.mark.parametrize("args, message", [
    (["list", "bogus"], "Invalid value for 'WHAT': cannot list `bogus`; choose one of: layers"),
    (["list", "layer"], "cannot list `layer` (did you mean `layers`?)"),
    (["validate", "{config}", "--format", "gitlab"], "Invalid value for '--format': `gitlab` is not a format"),
    (["evaluate", "{tmp}", "--split", "dev"], "Invalid value for '--split': `dev` is not a split"),
    (["export", "{tmp}", "--format", "onxx"], "Invalid value for '--format': unknown export format `onxx` "
                                              "(did you mean `onnx`?)"),
    (["export", "{tmp}", "--format", "keras", "--quantize", "int8"],
     "Invalid value for '--quantize': applies to --format tflite only, not `keras`"),
    (["export", "{tmp}", "--format", "tflite", "--quantize", "int4"], "unknown quantization `int4`"),
    (["saliency", "{tmp}", "x.png", "--method", "grad"], "Invalid value for '--method': unknown saliency method"),
    (["saliency", "{tmp}", "x.png", "--layer", "conv2d"], "Invalid value for '--layer': is for --method gradcam only"),
    (["init", "{tmp}/new.yaml", "--template", "lenett"], "Invalid value for '--template': unknown template `lenett`"),
    (["init", "{tmp}/new.yaml", "--data", "photos"], "Invalid value for '--data': takes KIND:DIR"),
    (["train"], "give a config file, or --resume RUN_DIR"),
    (["train", "{config}", "--resume", "{tmp}"], "give a config file or --resume RUN_DIR, not both"),
    (["train", "{config}", "--device", "xpu"], "Invalid value for '--device': `xpu` is not a device (did you mean "
                                               "`gpu`?)"),
    (["train", "{config}", "--set", "train.epochs"], "Invalid value for '--set': `train.epochs`: expected "
                                                     "KEY.PATH=VALUE"),
])
def test_a_malformed_command_line_exits_2(tmp_path, config, args, message):
    result = invoke(*[a.replace("{config}", str(config)).replace("{tmp}", str(tmp_path)) for a in args])
    assert_usage(result, message)
    assert not (tmp_path / "new.yaml").exists()


# ---------------------------------------------------------------- Ctrl-C before training

def start(config: Path, tmp_path: Path, fault: str) -> subprocess.Popen:
    command = [str(CNN)] if CNN.exists() else [sys.executable, "-m", "cnncli"]
    return subprocess.Popen([*command, "train", str(config), "-o", str(tmp_path / "runs"), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CNNCLI_FAULT": fault, "PYTHONWARNINGS": "ignore"})


@pytest.mark.parametrize("point, line", [
    ("cli_start", "Interrupted while cnn was starting; nothing was written."),
    ("tensorflow_import", "Interrupted while loading TensorFlow; nothing was written."),
    ("data_load", "Error: stopped while loading the data, before training started; nothing was written"),
])
def test_ctrl_c_during_start_up_says_what_stopped(config, tmp_path, point, line):
    proc = start(config, tmp_path, f"{point}:int")  # SIGINT to itself at that point
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.splitlines() == [line] and out == ""
    assert not (tmp_path / "runs").exists()


def test_ctrl_c_from_outside_while_the_data_loads(config, tmp_path):
    proc = start(config, tmp_path, "data_load:stop")  # frozen just before the data loads
    try:
        stat = Path(f"/proc/{proc.pid}/stat")
        for _ in range(3000):  # poll for the stop, however long TensorFlow takes to import
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "T":
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.splitlines() == ["Error: stopped while loading the data, before training started; "
                                "nothing was written"]
    assert not (tmp_path / "runs").exists()


def test_a_sampled_search_value_is_named_as_sampled_not_as_a_set(config):
    from cnncli.config.loading import load_config
    from cnncli.errors import ConfigError
    from cnncli.tune.space import as_overrides

    with pytest.raises(ConfigError) as caught:
        load_config(config, as_overrides({"train.batch_size": 3.5}))
    assert str(caught.value).startswith("search.params sampled train.batch_size=3.5: train.batch_size: ")
