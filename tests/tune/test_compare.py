"""`cnn compare`: exactly the differing config keys, the figures of each run, one PNG of curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import small_config
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.tune.compare import differences, flatten

runner = CliRunner()

CONFIG = small_config({"train.epochs": 2})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("compare")
    (tmp / "tiny.yaml").write_text(CONFIG)
    runs = []
    for sets in (["train.optimizer.learning_rate=0.01"], ["model.layers[0].filters=6", "train.epochs=3"]):
        args = ["train", str(tmp / "tiny.yaml"), "--output", str(tmp / "runs"), "--json"]
        result = runner.invoke(app, args + [x for s in sets for x in ("--set", s)])
        assert result.exit_code == 0, result.output
        runs.append(Path(json.loads(result.stdout)["run_dir"]))
    return runs


def test_compare_lists_exactly_the_differing_keys_and_writes_the_curves(two_runs, tmp_path):
    png = tmp_path / "both.png"
    result = runner.invoke(app, ["compare", *map(str, two_runs), "--output", str(png), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["differences"] == {"model.layers[0].filters": [4, 6], "train.epochs": [2, 3],
                                     "train.optimizer.learning_rate": [0.01, "(absent)"]}
    assert [r["epochs"] for r in report["runs"]] == [2, 3]
    for run in report["runs"]:
        assert {"val_accuracy", "test_accuracy", "train_seconds", "images_per_second", "parameters"} <= set(run)
    assert report["runs"][0]["parameters"] != report["runs"][1]["parameters"]
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1100, 450)


def test_compare_shows_the_kept_models_figures_from_metrics_json(two_runs, tmp_path):
    """Validation figures are those of the weights model.keras holds (an earlier best epoch, or the
    averages), as metrics.json scored them, not the last epoch's row; evaluate.tta adds its accuracy."""
    import shutil

    kept = tmp_path / "kept"
    shutil.copytree(two_runs[0], kept)
    metrics = json.loads((kept / "metrics.json").read_text())
    metrics["val"] = {"loss": 0.125, "accuracy": 0.875}
    metrics["test"]["tta"] = {"mode": "flip", "accuracy": 0.8125, "loss": 0.5}
    (kept / "metrics.json").write_text(json.dumps(metrics))
    (unfinished := tmp_path / "unfinished").mkdir()
    for name in ("run.json", "config.yaml", "history.csv"):
        shutil.copy(two_runs[1] / name, unfinished / name)
    result = runner.invoke(app, ["compare", str(kept), str(unfinished), "--json"])
    assert result.exit_code == 0, result.output
    ours, theirs = json.loads(result.stdout)["runs"]
    assert (ours["val_loss"], ours["val_accuracy"], ours["test_tta_accuracy"]) == (0.125, 0.875, 0.8125)
    assert ours["test_accuracy"] == metrics["test"]["accuracy"]
    header, *_, final = (two_runs[1] / "history.csv").read_text().splitlines()
    row = dict(zip(header.split(","), final.split(","), strict=True))
    assert theirs["val_accuracy"] == pytest.approx(float(row["val_accuracy"]))  # no metrics.json: the last epoch
    assert "test_accuracy" not in theirs and "test_tta_accuracy" not in theirs


def test_compare_prints_tables(two_runs, tmp_path):
    result = runner.invoke(app, ["compare", *map(str, two_runs), "--output", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert "config keys that differ" in result.stdout and "model.layers[0].filters" in result.stdout
    assert "train.batch_size" not in result.stdout


def test_compare_needs_two_runs(two_runs, tmp_path):
    result = runner.invoke(app, ["compare", str(two_runs[0]), "--output", str(tmp_path / "c.png")])
    assert result.exit_code == 1
    assert "give at least two runs" in result.stderr


def test_flatten_and_differences_on_nested_values():
    a = {"model": {"layers": [{"type": "Conv2D", "kernel_size": [3, 3]}]}, "seed": 1}
    b = {"model": {"layers": [{"type": "Conv2D", "kernel_size": [5, 5]}, {"type": "Flatten"}]}, "seed": 1}
    assert flatten(a) == {"model.layers[0].type": "Conv2D", "model.layers[0].kernel_size": [3, 3], "seed": 1}
    assert differences([a, b]) == {"model.layers[0].kernel_size": [[3, 3], [5, 5]],
                                   "model.layers[1].type": ["(absent)", "Flatten"]}


def test_compare_tables_keep_every_name_whole_on_a_narrow_terminal(two_runs, tmp_path, monkeypatch):
    from cnncli.commands import common

    monkeypatch.setattr(common.out, "_width", 60)
    runs = [*map(str, two_runs)] * 2  # four columns of values in 60 characters
    result = runner.invoke(app, ["compare", *runs, "--output", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    for name in ("images_per_second", "train.optimizer.learning_rate", "model.layers[0].filters"):
        assert name in result.stdout
    assert "…" not in result.stdout and "e+0" not in result.stdout


def test_cells_show_four_digits_and_whole_thousands():
    from cnncli.tune.compare import cell as _cell

    assert [_cell(v) for v in (0.123456, 1234.5678, 11832.4, 3, None, "x")] == [
        "0.1235", "1235", "11,832", "3", "", "x"]
