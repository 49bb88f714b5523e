"""Test-time augmentation: `cnn evaluate --tta flip` and `evaluate: {tta: flip}` score the mean prediction
of each image and its horizontal flip, beside the plain scores."""

from __future__ import annotations

import json
import re
from pathlib import Path

import helpers
import numpy as np
import pytest
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
CONFIG = helpers.small_config({
    "deterministic": True,
    "data.shapes": {"train_examples": 120, "test_examples": 60, "classes": ["x", "o", "triangle"]},
    "model.layers": [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "activation": "relu"},
                     {"type": "Flatten"}, {"type": "Dense", "units": 3, "activation": "softmax"}],
    "evaluate": {"tta": "flip"},
})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("tta")
    (where / "tta.yaml").write_text(CONFIG)
    result = runner.invoke(app, ["train", str(where / "tta.yaml"), "--output", str(where / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    return Path(json.loads(result.stdout)["run_dir"])


def by_hand(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(plain probabilities, the mean over the image and its mirror image, labels) of the test split."""
    import keras

    from cnncli.deploy.runs import open_run

    model = keras.saving.load_model(run_dir / "model.keras")
    data = open_run(run_dir).load_data()
    x = data.x_test.astype("float32")
    plain = model.predict(x, verbose=0)
    return plain, (plain + model.predict(x[:, :, ::-1], verbose=0)) / 2, data.y_test


def cross_entropy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-7, 1.0))))


def test_flip_views_are_the_image_and_its_mirror(run_dir):
    import keras

    from cnncli.deploy.runs import open_run
    from cnncli.model.predict_loop import keras_predict_views, tta_mean

    model = keras.saving.load_model(run_dir / "model.keras")
    x = open_run(run_dir).load_data().x_test
    views = keras_predict_views(model, x, "flip", batch_size=16)  # batches that do not divide the split
    assert views.shape == (60, 2, 3)
    plain, mean, _ = by_hand(run_dir)
    np.testing.assert_allclose(views[:, 0], plain, atol=1e-6)
    np.testing.assert_allclose(tta_mean(views), mean, atol=1e-6)
    assert not np.allclose(views[:, 1], plain, atol=1e-3)  # the mirror image is another input
    assert keras_predict_views(model, x, "none").shape == (60, 1, 3)


def test_evaluate_json_reports_both_accuracies(run_dir):
    result = runner.invoke(app, ["evaluate", str(run_dir), "--tta", "flip", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    plain, mean, y = by_hand(run_dir)
    assert doc["accuracy"] == pytest.approx(float(np.mean(plain.argmax(1) == y)))
    assert set(doc["tta"]) == {"mode", "accuracy", "loss"}
    assert doc["tta"]["mode"] == "flip"
    assert doc["tta"]["accuracy"] == pytest.approx(float(np.mean(mean.argmax(1) == y)))
    assert doc["tta"]["loss"] == pytest.approx(cross_entropy(mean, y), rel=1e-5)


def test_the_config_sets_the_default_and_the_option_overrides_it(run_dir):
    doc = json.loads(runner.invoke(app, ["evaluate", str(run_dir), "--json"]).stdout)
    assert doc["tta"]["mode"] == "flip"  # evaluate.tta of the run's config
    doc = json.loads(runner.invoke(app, ["evaluate", str(run_dir), "--tta", "none", "--json"]).stdout)
    assert "tta" not in doc


def test_the_printed_report_shows_both(run_dir):
    result = runner.invoke(app, ["evaluate", str(run_dir), "--tta", "flip"])
    assert result.exit_code == 0, result.output
    doc = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert (f"test-time augmentation (flip): loss {doc['tta']['loss']:.4f}   accuracy {doc['tta']['accuracy']:.2%} "
            f"(plain {doc['accuracy']:.2%})") in result.output


def test_train_writes_the_tta_scores_in_metrics_json(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    _, mean, y = by_hand(run_dir)
    assert metrics["test"]["tta"]["mode"] == "flip"
    assert metrics["test"]["tta"]["accuracy"] == pytest.approx(float(np.mean(mean.argmax(1) == y)))
    assert "tta" not in metrics.get("val", {})


def test_an_unknown_mode_is_a_usage_error(run_dir):
    result = runner.invoke(app, ["evaluate", str(run_dir), "--tta", "rotate"])
    assert result.exit_code == 2
    words = " ".join(re.sub("[│╭╮╰╯─]", " ", result.stderr).split())  # Typer's usage box, flattened
    assert "Usage: " in words and "Traceback" not in words
    assert "Invalid value for '--tta': `rotate` is not a test-time augmentation; choose none or flip" in words


def test_a_bad_config_value_is_one_error_line_with_its_line(tmp_path):
    path = tmp_path / "bogus.yaml"
    path.write_text("data: {dataset: shapes}\nevaluate:\n  tta: bogus\n")
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {path}:3: evaluate.tta: input should be 'none' or 'flip', got 'bogus'"
    ]
