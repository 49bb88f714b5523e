"""`cnn lr-find`: the learning-rate range test, its files, its suggestion and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import helpers
import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.train.lr_find import smoothed, suggest

runner = CliRunner()


def _config(tmp_path: Path, *changes) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(helpers.small_config({"train.optimizer": {"type": "Adam", "learning_rate": 0.003}}, *changes))
    return path


def _lr_find(*args) -> tuple[int, str, str]:
    result = runner.invoke(app, ["lr-find", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_json_files_and_config_untouched(tmp_path):
    config = _config(tmp_path)
    before = config.read_bytes()
    out = tmp_path / "found"
    code, stdout, stderr = _lr_find(config, "--output", out, "--start", "1e-4", "--end", "1", "--steps", "12", "--json")
    assert code == 0, stderr
    doc = json.loads(stdout)
    written = json.loads((out / "lr_find.json").read_text())
    assert (out / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert config.read_bytes() == before
    assert doc["output"] == str(out.resolve())
    rates, losses = written["learning_rates"], written["losses"]
    assert doc["learning_rates"] == rates and doc["suggested"] == written["suggested"]
    assert len(rates) == len(losses) == len(written["raw_losses"]) and 2 <= len(rates) <= 12
    assert rates[0] == pytest.approx(1e-4)
    ratios = np.array(rates[1:]) / np.array(rates[:-1])
    np.testing.assert_allclose(ratios, (1 / 1e-4) ** (1 / 11), rtol=1e-9)  # geometric, reaching 1 at step 12
    assert 1e-4 <= written["suggested"] <= 1
    assert doc["set"] == f"--set train.optimizer.learning_rate={written['suggested']:g}"


def test_prints_the_suggestion_and_the_set_line(tmp_path):
    config = _config(tmp_path)
    code, stdout, stderr = _lr_find(config, "--output", tmp_path / "o", "--start", "1e-3", "--end", "1", "--steps", "4")
    assert code == 0, stderr
    doc = json.loads((tmp_path / "o" / "lr_find.json").read_text())
    lines = stdout.splitlines()
    assert f"suggested learning rate {doc['suggested']:g} (a tenth of the rate of the lowest smoothed loss)" in stdout
    assert f"to use it: --set train.optimizer.learning_rate={doc['suggested']:g}" in lines
    assert f"wrote {tmp_path / 'o' / 'lr_find.png'} and {tmp_path / 'o' / 'lr_find.json'}" in lines


def test_default_folder_is_new_under_lr_find(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path)
    code, stdout, stderr = _lr_find(config, "--steps", "3", "--json")
    assert code == 0, stderr
    folder = Path(json.loads(stdout)["output"])
    assert folder.parent == (tmp_path / "lr_find" / "tiny").resolve()
    assert (folder / "lr_find.json").exists() and (folder / "lr_find.png").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--start", "0"], 2, "the first rate must be above 0, got 0"),
        (["--start", "1e-3", "--end", "1e-4"], 2, "the last rate must be above --start (0.001), got 0.0001"),
        (["--steps", "1"], 2, "1 is not in the range x>=2"),
        (["--set", "train.optimizr.type=SGD"], 1, "did you mean `optimizer`"),
    ],
)
def test_bad_input_is_one_error(tmp_path, args, code, message):
    exit_code, stdout, stderr = _lr_find(_config(tmp_path), "--output", tmp_path / "o", *args)
    assert exit_code == code
    assert message in " ".join(stderr.replace("│", " ").split())  # Typer's usage box wraps long lines
    assert "Traceback" not in stderr and not (tmp_path / "o").exists()
    if code == 1:
        assert len([line for line in stderr.splitlines() if line.startswith("Error:")]) == 1


def test_with_phases_the_rate_goes_to_the_first_phase():
    from types import SimpleNamespace

    from cnncli.train.lr_find import rate_key

    assert rate_key(SimpleNamespace(train=SimpleNamespace(phases=[object()]))) == "train.phases[0].learning_rate"
    assert rate_key(SimpleNamespace(train=SimpleNamespace(phases=None))) == "train.optimizer.learning_rate"


def test_smoothing_is_bias_corrected():
    np.testing.assert_allclose(smoothed([2.0] * 5, 0.9), [2.0] * 5)  # no pull towards 0 at the start
    assert smoothed([1.0, 3.0], 0.5) == pytest.approx([1.0, (0.25 + 1.5) / 0.75])


def test_suggestion_is_a_tenth_of_the_minimum():
    rates = list(1e-5 * 10 ** (np.arange(60) / 10))  # 6 decades, 10 steps each
    losses = [2.0] * 60
    losses[3] = 0.5  # the first steps do not count: their average rests on a few batches
    losses[40] = 1.0  # the lowest after them, at 1e-1
    assert suggest(rates, losses, rates[0], rates[-1]) == pytest.approx(1e-2)
    # A sweep that diverged at once: a tenth of the best rate, kept within the range.
    assert suggest([1e-3, 2e-3], [1.0, 5.0], 1e-3, 1.0) == 1e-3


@pytest.mark.slow
def test_suggested_rate_trains_the_quick_start(tmp_path):
    config = helpers.CONFIGS / "shapes_cnn.yaml"
    before = config.read_bytes()
    # From scratch its loss sits on a plateau for about an epoch: 100 steps see no learning, 300 do.
    code, stdout, stderr = _lr_find(config, "--output", tmp_path / "found", "--steps", "300", "--json")
    assert code == 0, stderr
    suggested = json.loads(stdout)["suggested"]
    assert config.read_bytes() == before
    result = runner.invoke(
        app,
        ["train", str(config), "--set", f"train.optimizer.learning_rate={suggested}", "--output",
         str(tmp_path / "runs"), "--json"],
    )
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["metrics"]["test"]["accuracy"] >= 0.98
