"""PNG plots (sizes, atomic writes, no pyplot state) and the Rich evaluation report."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from cnncli import plots
from cnncli.errors import DataError
from cnncli.insight.terminal import print_evaluation
from cnncli.model.scores import classification_report
from cnncli.plots import cm_figure_side, normalize_per_image, plot_confusion_matrix, plot_curves, plot_image_grid

HISTORY = [
    {"epoch": 1, "loss": 1.2, "accuracy": 0.55, "val_loss": 1.0, "val_accuracy": 0.60, "learning_rate": 1e-3},
    {"epoch": 2, "loss": 0.8, "accuracy": 0.75, "val_loss": 0.9, "val_accuracy": 0.70, "learning_rate": 6e-4},
    {"epoch": 3, "loss": 0.5, "accuracy": 0.85, "val_loss": 0.7, "val_accuracy": 0.78, "learning_rate": 3.6e-4},
]


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def only_file(directory, name) -> None:
    """`name` is the only thing in `directory`: no temporary file left behind."""
    assert sorted(os.listdir(directory)) == [name]


def test_curves_are_1000_by_400(tmp_path):
    out = plot_curves(HISTORY, tmp_path / "curves.png")
    assert out == tmp_path / "curves.png"
    assert png_size(out) == (1000, 400)
    only_file(tmp_path, "curves.png")


@pytest.mark.parametrize("history", [
    [{"epoch": 1, "loss": 0.9, "accuracy": 0.5}, {"epoch": 2, "loss": 0.6, "accuracy": 0.7}],  # no val, no lr
    [{"epoch": "1", "loss": "0.9", "auc": "0.7", "val_loss": ""}],  # read back from CSV, first metric is auc
    [{"loss": 0.9}, {"loss": 0.8}],  # no metric, no epoch column
], ids=["train-only", "csv-strings", "loss-only"])
def test_curves_with_missing_columns(tmp_path, history):
    assert png_size(plot_curves(history, tmp_path / "curves.png")) == (1000, 400)
    only_file(tmp_path, "curves.png")


def test_first_metric_prefers_accuracy_then_column_order():
    assert plots._first_metric(HISTORY) == "accuracy"
    assert plots._first_metric([{"epoch": 1, "loss": 1, "val_auc": 1, "auc": 1, "mae": 1}]) == "auc"
    assert plots._first_metric([{"epoch": 1, "loss": 1, "learning_rate": 1}]) is None


def test_curves_need_at_least_one_epoch(tmp_path):
    with pytest.raises(DataError, match="no epochs in the history"):
        plot_curves([], tmp_path / "curves.png")
    assert os.listdir(tmp_path) == []


def test_curves_replace_an_existing_file(tmp_path):
    target = tmp_path / "curves.png"
    target.write_bytes(b"old")
    plot_curves(HISTORY, target)
    assert png_size(target) == (1000, 400)
    only_file(tmp_path, "curves.png")


def test_crash_while_rendering_leaves_neither_temp_file_nor_half_png(tmp_path, monkeypatch):
    target = tmp_path / "curves.png"
    target.write_bytes(b"previous")

    def explode(self, *args, **kwargs):
        Path(args[0]).write_bytes(b"\x89PNG half")  # part of a file is written, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(plots.Figure, "savefig", explode)
    with pytest.raises(KeyboardInterrupt):
        plot_curves(HISTORY, target)
    assert target.read_bytes() == b"previous"
    only_file(tmp_path, "curves.png")


def test_written_png_follows_the_umask_not_owner_only(tmp_path):
    if os.name != "posix":
        pytest.skip("permission bits are POSIX")
    old = os.umask(0o022)
    try:
        out = plot_curves(HISTORY, tmp_path / "curves.png")
    finally:
        os.umask(old)
    assert out.stat().st_mode & 0o777 == 0o644


def test_plots_do_not_touch_pyplot(tmp_path):
    plot_curves(HISTORY, tmp_path / "curves.png")
    plot_confusion_matrix(np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / "cm.png")
    if "matplotlib.pyplot" in sys.modules:  # imported by something else; it must hold no figures of ours
        import matplotlib.pyplot as plt
        assert plt.get_fignums() == []


@pytest.mark.parametrize(("k", "size"), [(3, (600, 500)), (10, (700, 600)), (30, (1500, 1400))])
def test_confusion_matrix_size_scales_with_classes(tmp_path, k, size):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(k, k))
    names = [f"class_{i}" for i in range(k)]
    out = plot_confusion_matrix(cm, names, tmp_path / "confusion_matrix.png")
    assert png_size(out) == size
    only_file(tmp_path, "confusion_matrix.png")


def test_confusion_matrix_side_has_a_minimum_and_a_maximum():
    assert cm_figure_side(2) == 5.0
    assert cm_figure_side(10) == pytest.approx(6.0)
    assert cm_figure_side(1000) == 40.0


def test_confusion_matrix_unnormalized_and_with_an_empty_row(tmp_path):
    cm = np.array([[3, 1], [0, 0]])  # the second class has no examples: no division by zero
    for normalize in (True, False):
        out = plot_confusion_matrix(cm, ["x", "y"], tmp_path / f"cm_{normalize}.png", normalize=normalize)
        assert png_size(out) == (600, 500)


def test_confusion_matrix_shape_must_match_names(tmp_path):
    with pytest.raises(DataError, match=r"confusion matrix has shape \(2, 2\) but there are 3 class names"):
        plot_confusion_matrix(np.eye(2), ["a", "b", "c"], tmp_path / "cm.png")


def test_image_grid_of_filters(tmp_path):
    filters = np.random.default_rng(1).normal(scale=0.05, size=(6, 5, 5, 1))
    out = plot_image_grid(filters, tmp_path / "filters.png", titles=[f"f{i}" for i in range(6)], ncols=3)
    width, height = png_size(out)
    assert width == 3 * 150  # 3 columns of 1.5 in at 100 dpi
    assert height == 2 * 175  # 2 rows of 1.5 in + room for a title
    only_file(tmp_path, "filters.png")


@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (5, 8, 8)])
def test_image_grid_rgb_and_channelless(tmp_path, shape):
    images = np.random.default_rng(2).uniform(-3, 3, size=shape)
    out = plot_image_grid(images, tmp_path / "grid.png")
    assert png_size(out) == ((300, 300) if shape[0] == 4 else (450, 300))  # ceil(sqrt(N)) columns


def test_image_grid_rejects_other_channel_counts(tmp_path):
    with pytest.raises(DataError, match=r"got shape \(2, 4, 4, 2\)"):
        plot_image_grid(np.zeros((2, 4, 4, 2)), tmp_path / "grid.png")
    with pytest.raises(DataError, match="2 titles for 3 images"):
        plot_image_grid(np.zeros((3, 4, 4, 1)), tmp_path / "grid.png", titles=["a", "b"])


def test_normalize_per_image():
    x = np.array([[[-2.0, 0.0], [2.0, 1.0]], [[5.0, 5.0], [5.0, 5.0]], [[0.0, 0.1], [0.2, 0.3]]])
    out = normalize_per_image(x)
    np.testing.assert_allclose(out[0], [[0.0, 0.5], [1.0, 0.75]])
    np.testing.assert_array_equal(out[1], np.zeros((2, 2)))  # constant image: no NaN
    np.testing.assert_allclose(out[2], [[0.0, 1 / 3], [2 / 3, 1.0]])


# --- print_evaluation -------------------------------------------------------------------------

Y = np.array([0, 0, 1, 1, 2, 2])
PROBS = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.1, 0.8, 0.1],
                  [0.2, 0.5, 0.3], [0.5, 0.1, 0.4], [0.1, 0.1, 0.8]])


def render(report, title="test split") -> str:
    console = Console(record=True, width=120)
    print_evaluation(console, report, title)
    return console.export_text()


def test_print_evaluation_shows_metrics_classes_matrix_and_mixups():
    text = render(classification_report(Y, PROBS, ["cat", "dog", "bird"], top_k=2))
    assert "test split" in text
    assert "accuracy 66.67%" in text
    assert "top-2 accuracy 100.00%" in text
    assert "loss 0.6027" in text  # -mean(log [.7 .3 .8 .5 .4 .8])
    for name in ("cat", "dog", "bird"):
        assert name in text
    assert "0.667" in text and "0.800" in text  # dog precision, dog f1
    assert "Confusion matrix" in text
    assert "bird → cat: 1" in text and "cat → dog: 1" in text


def test_print_evaluation_escapes_markup_in_class_names():
    text = render(classification_report(Y, PROBS, ["[bold]x", "y", "z"]), title="[red]t")
    assert "[bold]x" in text and "[red]t" in text


def test_print_evaluation_skips_matrix_table_above_20_classes():
    k = 21
    y = np.arange(k)
    probs = np.full((k, k), 1 / k)
    text = render(classification_report(y, probs, [f"c{i}" for i in range(k)]))
    assert "Confusion matrix of 21 classes not shown" in text
    assert "top-5 accuracy" in text
