"""The command line itself: help without TensorFlow, version, usage errors, JSON on stdout.

Start-up time is measured in benchmarks/cli_startup.py, not asserted here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnncli import __version__
from cnncli.cli import app

runner = CliRunner()
CNN = Path(sys.executable).parent / "cnn"  # the console script installed beside this Python

CONFIG = """\
model:
  input_shape: [8, 8, 1]
  layers:
    - {type: Conv2D, filters: 4, kernel_size: 3, strides: 2}
    - {type: Flatten}
    - {type: Dense, units: 2, activation: softmax}
"""


def cnn(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(CNN)] if CNN.exists() else [sys.executable, "-m", "cnncli"]
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)


def test_help_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from cnncli.cli import app\n"
        "for args in (['--help'], ['summary', '--help'], ['validate', '--help']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "    assert 'Usage:' in result.stdout, result.stdout\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_console_script_help():
    done = cnn("--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    for command in ("validate", "summary"):
        assert command in done.stdout


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"cnncli {__version__}\n"


@pytest.mark.parametrize("args, fragment", [
    (["frobnicate"], "No such command 'frobnicate'"),
    (["summary"], "Missing argument"),
    (["validate"], "Missing argument"),
    (["summary", "x.yaml", "--no-such-option"], "No such option"),
])
def test_usage_errors_exit_2(args, fragment):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert result.stdout == ""


def test_no_arguments_prints_help():
    result = runner.invoke(app, [])
    assert result.exit_code == 2  # click's no_args_is_help convention
    assert "Usage:" in result.stdout + result.stderr


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_summary_json_is_exactly_one_document(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONFIG)
    done = cnn("summary", "--json", path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)  # json.loads refuses anything after the document
    assert doc["total_params"] == 40 + 3 * 3 * 4 * 2 + 2 == 114
    assert [row["name"] for row in doc["layers"]] == ["rescale", "conv2d", "flatten", "dense"]


def test_validate_json_is_exactly_one_document(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(CONFIG)
    bad.write_text("train: {epochs: 0}\n" + CONFIG)
    result = runner.invoke(app, ["validate", "--json", str(good), str(bad)])
    assert result.exit_code == 1
    docs = json.loads(result.stdout)
    assert [(d["file"], d["ok"], d["total_params"]) for d in docs] == [(str(good), True, 114), (str(bad), False, 0)]
    assert docs[0]["input_shape"] == [8, 8, 1] and docs[0]["error"] is None
    assert docs[1]["error"].startswith(f"{bad}:1: train.epochs: ")


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_error_in_a_real_process_is_one_clean_line(tmp_path):
    """TensorFlow's C++ start-up logging must not precede the message on stderr."""
    path = tmp_path / "bad.yaml"
    path.write_text(CONFIG.replace("filters: 4", "filtrs: 4"))
    done = cnn("summary", "--json", path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(f"Error: {path}:4: model.layers[0].filtrs: Conv2D takes no argument `filtrs`")
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
