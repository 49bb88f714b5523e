"""`cnn report`: one self-contained HTML page per run, every picture embedded, nothing fetched.

The slow test renders the page in headless Chromium (Debian's `chromium`) at a
phone's and a desktop's width. CI runs the default suite (`-m 'not slow'`), so
it does not need Chromium; the slow test skips, saying why, on a machine
without it, and fails when CI=true asks for it and it is missing.
"""

from __future__ import annotations

import base64
import functools
import io
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import trained_runs as tr
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SECTIONS = ["Learning curves", "Per-class metrics", "Confusion matrix", "Worst mistakes", "Most confused pairs",
            "Grad-CAM", "Model", "Config"]


@functools.cache
def _page() -> tuple[str, str]:
    out = tr._TMP / "report" / "shapes.html"
    result = runner.invoke(app, ["report", str(tr.shapes_run()), "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    return str(out), out.read_text()


def test_report_is_one_file_with_every_picture_embedded():
    path, page = _page()
    assert sorted(os.listdir(os.path.dirname(path))) == ["shapes.html"]  # nothing beside it
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    sources = re.findall(r'<img src="([^"]*)"', page)
    assert len(sources) == 4 + 6  # curves, matrix, mistakes, pairs; Grad-CAM on one image of each class
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as png:
            png.verify()
            assert png.format == "PNG"
    links = re.findall(r'(?:src|href)\s*=\s*"?([^" >]+)', page)
    assert not [link for link in links if not link.startswith("data:")]
    assert not re.search(r"https?://", page) and "url(" not in page and "@import" not in page
    assert '<meta name=viewport content="width=device-width, initial-scale=1">' in page


def test_report_shows_the_test_time_augmentation_accuracy_beside_the_plain_one(tmp_path):
    """A run whose config has evaluate.tta: the page gives both accuracies, as `cnn evaluate` computes them."""
    import json

    run = tmp_path / "run"
    shutil.copytree(tr.shapes_run(), run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("evaluate:\n  tta: none\n", "evaluate:\n  tta: flip\n"))
    assert "  tta: flip\n" in config.read_text()
    result = runner.invoke(app, ["evaluate", str(run), "--json"])
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)
    assert scores["tta"]["mode"] == "flip"
    out = tmp_path / "page.html"
    assert runner.invoke(app, ["report", str(run), "--output", str(out)]).exit_code == 0
    page = out.read_text()
    assert f"test accuracy<b>{scores['accuracy']:.2%}</b>" in page
    assert f"test accuracy, flip TTA<b>{scores['tta']['accuracy']:.2%}</b>" in page
    _, plain = _page()
    assert "TTA<b>" not in plain  # a run without evaluate.tta has one accuracy


def test_report_refuses_other_suffixes(tmp_path):
    result = runner.invoke(app, ["report", str(tr.shapes_run()), "--output", str(tmp_path / "r.pdf")])
    assert result.exit_code == 1
    assert result.stderr == f"Error: --output `{tmp_path / 'r.pdf'}`: the report is an HTML file; " \
                            "give a path ending in .html\n"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; apt-get install -y chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("width, height", [(390, 844), (1280, 900)])
def test_report_renders_in_headless_chromium(tmp_path, width, height):
    chromium = _chromium()
    path, _ = _page()
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}",
                    f"--window-size={width},{height}", f"file://{path}"],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as png:
        assert png.size == (width, height)
        pixels = np.asarray(png.convert("L"), np.float64)
    assert pixels.std() > 20  # text, tables and plots, not a blank page
    assert (pixels < 100).mean() > 0.01  # some dark ink: headings and figures were drawn


def test_a_model_without_convolutions_gets_no_gradcam(tmp_path):
    import keras

    from cnncli.insight.html_report import _gradcam_pictures

    inputs = keras.Input((8, 8, 1))
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(inputs)))
    x = np.zeros((4, 8, 8, 1), np.uint8)
    assert _gradcam_pictures(model, x, np.array([0, 1, 0, 1]), ["a", "b"], tmp_path) == []
