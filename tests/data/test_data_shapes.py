"""The built-in `shapes` dataset: determinism, balance, bounding boxes, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from cnncli.config.schema import SHAPE_CLASSES, DataConfig, ShapesSpec
from cnncli.data import load, shapes


def test_same_seed_same_bytes_other_seed_other_images():
    spec = ShapesSpec(image_size=20, train_examples=50)
    a, b, c = shapes.generate(spec, 50, 7), shapes.generate(spec, 50, 7), shapes.generate(spec, 50, 8)
    for left, right in zip(a, b, strict=True):
        assert left.tobytes() == right.tobytes()
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], shapes.generate(spec, 50, 7, split=1)[0])  # test stream differs


def test_arrays_and_labels():
    spec = ShapesSpec(image_size=24, classes=["o", "line", "x"])
    x, y, boxes = shapes.generate(spec, 301, 0)
    assert x.shape == (301, 24, 24, 1) and x.dtype == np.uint8
    assert y.dtype == np.int64 and boxes.shape == (301, 4) and boxes.dtype == np.int64
    assert list(np.bincount(y)) == [101, 100, 100]  # balanced to within one
    assert len(np.unique(y[:30])) == 3  # and shuffled, not in blocks


def test_load_uses_spec_counts_and_figure_names():
    cfg = DataConfig(dataset="shapes", validation_split=0,
                     shapes={"image_size": 16, "train_examples": 12, "test_examples": 6, "classes": ["square", "x"]})
    ds = load(cfg, seed=42)
    assert ds.class_names == ["square", "x"]
    assert (ds.x_train.shape, ds.x_test.shape) == ((12, 16, 16, 1), (6, 16, 16, 1))
    assert ds.source == "shapes (seed 42)" and ds.warnings == []
    assert list(np.bincount(ds.y_train)) == [6, 6]


def test_noise_setting_changes_pixels_not_figures():
    clean = shapes.generate(ShapesSpec(image_size=16, noise=0), 20, 1)
    noisy = shapes.generate(ShapesSpec(image_size=16, noise=0.2), 20, 1)
    assert np.array_equal(clean[1], noisy[1]) and np.array_equal(clean[2], noisy[2])
    assert not np.array_equal(clean[0], noisy[0])


@pytest.mark.parametrize("figure", SHAPE_CLASSES)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_bbox_holds_the_figure(figure, size):
    rng = np.random.default_rng(size)
    for _ in range(20):
        image, (top, left, bottom, right) = shapes.render(figure, rng, size)
        assert image.shape == (size, size) and image.dtype == np.uint8
        assert 0 <= top < bottom <= size and 0 <= left < right <= size
        background = np.bincount(image.ravel()).argmax()
        rows, cols = np.nonzero(image != background)
        assert len(rows), "the figure is visible"
        # every figure pixel is in the box, and the box is at most a pixel looser than the visible figure
        assert rows.min() >= top and rows.max() < bottom and cols.min() >= left and cols.max() < right
        assert rows.min() - top <= 1 and bottom - 1 - rows.max() <= 1
        assert cols.min() - left <= 1 and right - 1 - cols.max() <= 1
        assert image[image != background].mean() > background  # bright figure on a darker ground


def test_figures_stay_inside_with_a_margin():
    x, _, boxes = shapes.generate(ShapesSpec(image_size=32, noise=0), 600, 3)
    assert boxes[:, :2].min() >= 1 and boxes[:, 2:].max() <= 31
    heights, widths = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert np.maximum(heights, widths).min() >= 4  # even the smallest figure is recognisable
    assert len(np.unique(boxes[:, 0])) > 10  # positions vary


def test_render_rejects_unknown_figure():
    with pytest.raises(ValueError, match="unknown figure 'star'"):
        shapes.render("star", np.random.default_rng(0))


def test_default_set_generates_fast():
    spec = ShapesSpec()
    start = time.process_time()  # CPU time: other processes on a busy CI machine do not count
    shapes.generate(spec, spec.train_examples, 0)
    shapes.generate(spec, spec.test_examples, 0, split=1)
    assert time.process_time() - start < 3.0


@pytest.mark.slow
def test_small_cnn_learns_it_and_beats_an_mlp():
    """The dataset's promise: ≥ 95% for a small CNN in about a minute, clearly out of an MLP's reach."""
    import keras

    ds = load(DataConfig(dataset="shapes", validation_split=0), seed=42)
    keras.utils.set_random_seed(0)

    def fit(layers, epochs):
        model = keras.Sequential([keras.Input(ds.input_shape), keras.layers.Rescaling(1 / 255), *layers,
                                  keras.layers.Dense(ds.num_classes, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(ds.x_train, ds.y_train, batch_size=32, epochs=epochs, verbose=0)
        return model.evaluate(ds.x_test, ds.y_test, verbose=0)[1]

    cnn = fit([keras.layers.Conv2D(16, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
               keras.layers.Conv2D(32, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D(),
               keras.layers.Flatten(), keras.layers.Dense(64, activation="relu")], epochs=12)
    mlp = fit([keras.layers.Flatten(), keras.layers.Dense(256, activation="relu"),
               keras.layers.Dense(128, activation="relu")], epochs=12)
    assert cnn >= 0.95
    assert cnn - mlp >= 0.1
