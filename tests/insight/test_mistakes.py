"""`cnn evaluate --errors`: the highest-loss images, each loss the model's own, and file paths for image folders."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import trained_runs as tr
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.insight.mistakes import pair_examples, worst

runner = CliRunner()


def test_errors_lists_the_16_highest_losses_each_the_models_own():
    from cnncli.deploy.runs import open_run

    result = runner.invoke(app, ["evaluate", str(tr.shapes_run()), "--errors", "16", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    errors = doc["errors"]
    assert len(errors) == 16
    losses = [e["loss"] for e in errors]
    assert losses == sorted(losses, reverse=True)
    run = open_run(tr.shapes_run())
    data = run.load_data()
    model = run.load_model()
    index = [e["index"] for e in errors]
    probs = np.asarray(model(data.x_test.astype(np.float32), training=False), np.float32)
    keras_losses = keras.losses.sparse_categorical_crossentropy(data.y_test, probs).numpy()
    np.testing.assert_allclose(losses, keras_losses[index], rtol=1e-5, atol=1e-6)
    assert losses[-1] >= np.sort(keras_losses)[-16] - 1e-6  # nothing left out scores higher
    for e in errors:
        assert e["true"] == run.class_names[data.y_test[e["index"]]]
        assert e["predicted"] == run.class_names[int(probs[e["index"]].argmax())]
        assert e["probability"] == pytest.approx(float(probs[e["index"]].max()), abs=1e-6)
    with Image.open(doc["errors_png"]) as png:
        assert png.size == (8 * 160, int(2 * 190 + 40))  # 8 columns of 1.6 in, 2 rows with captions, title
    assert all(len(p["examples"]) == min(p["count"], 6) for p in doc["most_confused"])


def test_worst_and_pairs_on_known_numbers():
    names = ["a", "b", "c"]
    y = np.array([0, 1, 2, 0, 1])
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1]])
    rows = worst(y, probs, names, 3, paths=[f"f{i}.png" for i in range(5)])
    assert [(r["index"], r["path"], r["true"], r["predicted"]) for r in rows] == [  # 1 and 3 tie: lower first
        (1, "f1.png", "b", "a"), (3, "f3.png", "a", "b"), (4, "f4.png", "b", "a")]
    assert rows[0]["loss"] == pytest.approx(-np.log(0.2)) and rows[0]["probability"] == pytest.approx(0.7)
    pairs = pair_examples(y, probs, names, [{"true": "b", "predicted": "a", "count": 2}])
    assert [e["index"] for e in pairs[0]["examples"]] == [1, 4]


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_errors_of_an_image_folder_name_the_files(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for k, name in enumerate(["dark", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 120, (12, 12), dtype=np.uint8) + 120 * k
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{name}_{i}.png")
    config = tmp_path / "folder.yaml"
    config.write_text(f"name: folder\nseed: 0\ndata: {{dataset: image_folder, path: {root}, validation_split: 0.0}}\n"
                      "model:\n  layers:\n    - {type: Conv2D, filters: 2, kernel_size: 3}\n"
                      "    - {type: GlobalAveragePooling2D}\n    - {type: Dense, units: 2, activation: softmax}\n"
                      "train: {epochs: 1, batch_size: 8}\n")
    trained = runner.invoke(app, ["train", str(config), "--output", str(tmp_path / "runs"), "--quiet", "--report"])
    assert trained.exit_code == 0, trained.stderr
    run_dir = trained.stdout.strip().splitlines()[-1]
    result = runner.invoke(app, ["evaluate", run_dir, "--errors", "4", "--json"])
    assert result.exit_code == 0, result.stderr
    errors = json.loads(result.stdout)["errors"]
    assert len(errors) == 4
    for e in errors:
        path = tmp_path.joinpath(e["path"])
        assert path.is_file() and path.parent.name == e["true"], e
    page = (tmp_path / run_dir / "report.html").read_text()  # --report wrote the page, files listed in it
    assert errors[0]["path"] in page
