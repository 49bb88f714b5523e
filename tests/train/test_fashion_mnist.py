"""The course configs retargeted to real Fashion-MNIST reach their accuracy floors in 5 epochs.

Figures and timings for all three are printed by benchmarks/accuracy.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import CONFIGS, need_fashion_mnist
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()


def train(config: str, tmp_path: Path, *extra: str) -> Path:
    need_fashion_mnist()
    result = runner.invoke(app, ["train", str(CONFIGS / config), "--set", "data.dataset=fashion_mnist",
                                 "--epochs", "5", "--output", str(tmp_path), "--json", *extra])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def test_one_layer_softmax_reaches_83_percent(tmp_path):
    run_dir = train("mnist_softmax.yaml", tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert metrics["examples"] == 10_000
    assert metrics["accuracy"] >= 0.83


def test_mlp_reaches_87_percent_and_its_rate_decays_as_0_01_times_0_6_per_epoch(tmp_path):
    run_dir = train("mnist_mlp.yaml", tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"] >= 0.87
    with open(run_dir / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    for row in rows:
        assert float(row["learning_rate"]) == pytest.approx(0.01 * 0.6 ** (int(row["epoch"]) - 1), rel=1e-6)


@pytest.mark.slow
def test_lenet_cnn_reaches_90_5_percent(tmp_path):
    """In float32 it ends above 91%; on a CPU with native bfloat16, where precision `auto` picks
    mixed_bfloat16, it ended at 90.78% (AMD EPYC Zen 4), so the floor holds for both."""
    run_dir = train("mnist_lenet.yaml", tmp_path)
    assert json.loads((run_dir / "metrics.json").read_text())["test"]["accuracy"] >= 0.905
