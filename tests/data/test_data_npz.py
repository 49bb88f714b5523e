"""`npz`: array names, lengths, label forms and pixel ranges."""

from __future__ import annotations

import numpy as np
import pytest
from test_data_api import write_npz

from cnncli.config.schema import DataConfig
from cnncli.data import describe, load
from cnncli.errors import DataError


def _load(path, **cfg):
    return load(DataConfig(dataset="npz", path=str(path), validation_split=0, **cfg), seed=0)


def test_good_file_gets_a_channel_axis(tmp_path):
    path = write_npz(tmp_path / "d.npz", n_train=12, n_test=6, size=(6, 5))
    ds = _load(path)
    assert ds.x_train.shape == (12, 6, 5, 1) and ds.x_test.shape == (6, 6, 5, 1)
    assert ds.class_names == ["0", "1", "2"] and ds.source == str(path)
    with np.load(path) as f:
        assert np.array_equal(ds.x_train[..., 0], f["x_train"])
    assert describe(DataConfig(dataset="npz", path=str(path))).input_shape == (6, 5, 1)


def test_class_names_one_hot_and_column_labels(tmp_path):
    onehot = np.eye(4, dtype=np.float32)[np.arange(8) % 4]
    path = write_npz(tmp_path / "d.npz", n_train=8, n_test=4, channels=3, y_train=onehot,
                     y_test=(np.arange(4) % 4)[:, None], class_names=np.array(["a", "b", "c", "d"]))
    ds = _load(path)
    assert ds.class_names == ["a", "b", "c", "d"]
    assert list(ds.y_train) == [0, 1, 2, 3, 0, 1, 2, 3] and list(ds.y_test) == [0, 1, 2, 3]
    assert ds.x_train.shape == (8, 6, 5, 3)
    assert describe(DataConfig(dataset="npz", path=str(path))).class_names == ["a", "b", "c", "d"]


def test_one_hot_width_counts_classes_without_examples(tmp_path):
    onehot = np.eye(5, dtype=np.uint8)[np.arange(12) % 3]
    path = write_npz(tmp_path / "d.npz", y_train=onehot)
    assert _load(path).class_names == ["0", "1", "2", "3", "4"]
    assert describe(DataConfig(dataset="npz", path=str(path))).num_classes == 5


def test_missing_array_lists_what_the_file_has(tmp_path):
    path = write_npz(tmp_path / "d.npz", y_test=None, labels=np.zeros(3))
    for call in (_load, lambda p: describe(DataConfig(dataset="npz", path=str(p)))):
        with pytest.raises(DataError, match=r"d.npz: no array `y_test`; the file has x_train, y_train, x_test, "
                                            r"labels; it needs x_train, y_train, x_test, y_test"):
            call(path)


def test_mismatched_lengths(tmp_path):
    path = write_npz(tmp_path / "d.npz", n_train=12, y_train=np.zeros(11, np.int64))
    with pytest.raises(DataError, match="d.npz: x_train has 12 images but y_train has 11 labels"):
        _load(path)


@pytest.mark.parametrize("bad, fragment", [
    (np.nan, "x_train: 1 pixels are NaN or infinite"),
    (np.inf, "x_train: 1 pixels are NaN or infinite"),
    (300.0, r"x_train: float pixels must lie in \[0, 1\] or \[0, 255\], found 0..300"),
    (-0.5, r"x_train: float pixels must lie in \[0, 1\] or \[0, 255\], found -0.5..1"),
])
def test_bad_float_pixels_name_file_and_array(tmp_path, bad, fragment):
    x = np.random.default_rng(0).random((12, 6, 5)).astype(np.float32)
    x[3, 2, 1] = bad
    x[0, 0, 0] = 0.0
    x[0, 0, 1] = 1.0
    path = write_npz(tmp_path / "d.npz", x_train=x)
    with pytest.raises(DataError, match=f"d.npz: {fragment}"):
        _load(path)


def test_float_pixels_are_scaled_to_0_255(tmp_path):
    unit = np.linspace(0, 1, 12 * 30, dtype=np.float32).reshape(12, 6, 5)
    ds = _load(write_npz(tmp_path / "a.npz", x_train=unit))
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert ds.x_train[0, 0, 1, 0] == round(unit[0, 0, 1] * 255)
    wide = (unit * 255).astype(np.float64)
    assert np.array_equal(_load(write_npz(tmp_path / "b.npz", x_train=wide)).x_train, ds.x_train)


@pytest.mark.parametrize("labels, fragment", [
    (np.arange(12) - 1, "labels must be 0 or more, found -1"),
    (np.arange(12) + 0.5, "labels must be whole numbers"),
    (np.array(["a"] * 12), "labels must be integers 0..K-1, got dtype <U1"),
])
def test_bad_labels(tmp_path, labels, fragment):
    with pytest.raises(DataError, match=f"d.npz: y_train: {fragment}"):
        _load(write_npz(tmp_path / "d.npz", y_train=labels))


def test_wrong_image_rank_and_too_few_names(tmp_path):
    with pytest.raises(DataError, match=r"expected images shaped \(N, H, W\) or \(N, H, W, C\) with C 1 or 3, "
                                        r"got \(12, 6, 5, 2\)"):
        _load(write_npz(tmp_path / "a.npz", channels=2))
    with pytest.raises(DataError, match="`class_names` has 2 names but the labels go up to 2"):
        _load(write_npz(tmp_path / "b.npz", class_names=np.array(["x", "y"])))


def test_not_an_archive(tmp_path):
    (tmp_path / "d.npz").write_text("hello")
    with pytest.raises(DataError, match="d.npz: not a readable .npz archive"):
        _load(tmp_path / "d.npz")
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(DataError, match="one.npy: holds a single array, not an .npz archive"):
        _load(tmp_path / "one.npy")
    with pytest.raises(DataError, match="missing.npz: no such file"):
        _load(tmp_path / "missing.npz")


def test_object_arrays_are_refused(tmp_path):
    path = write_npz(tmp_path / "d.npz", x_test=np.array([object()] * 6, dtype=object))
    with pytest.raises(DataError, match="array `x_test` cannot be read"):
        _load(path)
