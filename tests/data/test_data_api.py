"""The public face of cnncli.data: the registry, describe vs load, and the shared preparation.

The small file builders here (IDX, npz, image folders) are imported by the
per-source test modules too.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnncli.config.schema import DataConfig
from cnncli.data import SOURCES, Dataset, DatasetInfo, convert_images, describe, keras_datasets, list_datasets, load
from cnncli.data.prepare import limit_indices, resize, to_channels, validation_indices
from cnncli.errors import DataError

SMALL_SHAPES = {"image_size": 16, "train_examples": 60, "test_examples": 30}


# ---------------------------------------------------------------- builders (shared)

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, np.uint8)
    magic = magic if magic is not None else 0x0800 | array.ndim
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder: Path, n_train=12, n_test=6, size=(5, 4), classes=3, gz=True, seed=0) -> dict:
    """Four IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, *size), dtype=np.uint8)
        y = (np.arange(n) % classes).astype(np.uint8)
        arrays[prefix] = (x, y)
        for kind, array, ndim in (("images", x, 3), ("labels", y, 1)):
            name = f"{prefix}-{kind}-idx{ndim}-ubyte" + (".gz" if gz else "")
            data = idx_bytes(array)
            (folder / name).write_bytes(gzip.compress(data) if gz else data)
    return arrays


def write_npz(path: Path, n_train=12, n_test=6, size=(6, 5), channels=None, classes=3, **extra) -> Path:
    rng = np.random.default_rng(0)
    shape = size if channels is None else (*size, channels)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    arrays.update(extra)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def write_image(path: Path, size=(8, 6), colour=False, value=None, seed=0) -> Path:
    """A small random image; `size` is (height, width); format from the suffix."""
    rng = np.random.default_rng(seed)
    shape = (*size, 3) if colour else size
    pixels = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def write_folder(root: Path, per_class=5, classes=("cat", "dog"), suffixes=(".png",), colour=False,
                 size=(8, 6)) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            write_image(root / name / f"{i:02d}{suffixes[i % len(suffixes)]}", size, colour, seed=c * 100 + i)
    return root


def write_cifar(root: Path, name: str, n: int = 4) -> Path:
    """A tiny extracted CIFAR folder (python pickles, as the real archives hold), n images per batch."""
    rng = np.random.default_rng(1)
    classes, label_key = (10, b"labels") if name == "cifar10" else (100, b"fine_labels")
    folder = root / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"] if name == "cifar10" else ["train", "test"]
    for i, file in enumerate(files):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: [(i * n + j) % classes for j in range(n)], b"batch_label": b"fake"}
        (folder / file).write_bytes(pickle.dumps(batch, protocol=2))
    return folder


@pytest.fixture
def offline_keras(tmp_path, monkeypatch):
    """An empty Keras cache and no way out to the network."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(keras_datasets.urllib.request, "getproxies", lambda: {})

    def unreachable(address, timeout=None):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(keras_datasets.socket, "create_connection", unreachable)
    monkeypatch.setattr(keras_datasets, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian-copy")
    return tmp_path / "keras_home" / "datasets"


# ---------------------------------------------------------------- registry and describe == load

def test_list_datasets_matches_the_schema():
    from cnncli.config.schema import DATASETS

    assert list_datasets() == sorted(DATASETS)
    assert all(SOURCES.get(name).summary for name in list_datasets())


def test_unknown_dataset_is_a_data_error_with_suggestion():
    cfg = DataConfig.model_construct(**{**DataConfig().model_dump(), "dataset": "mnits"})
    with pytest.raises(DataError, match=r"unknown dataset `mnits` \(did you mean `mnist`\?\)"):
        load(cfg, 0)


def _config_for(name: str, tmp_path: Path, **extra) -> DataConfig:
    """A small, offline config for every registered source."""
    cache = tmp_path / "keras_home" / "datasets"
    if name == "shapes":
        return DataConfig(dataset=name, shapes=SMALL_SHAPES, **extra)
    if name == "mnist":
        return DataConfig(dataset=name, path=str(write_npz(tmp_path / "mnist.npz", size=(28, 28), classes=10)),
                          **extra)
    if name == "fashion_mnist":
        write_idx(cache / "fashion-mnist", size=(28, 28), classes=10)
        return DataConfig(dataset=name, **extra)
    if name in ("cifar10", "cifar100"):
        return DataConfig(dataset=name, path=str(write_cifar(tmp_path, name)), **extra)
    if name == "idx":
        write_idx(tmp_path / "idx", classes=4)
        return DataConfig(dataset=name, path=str(tmp_path / "idx"), **extra)
    if name == "npz":
        return DataConfig(dataset=name, path=str(write_npz(tmp_path / "d.npz", channels=3)), **extra)
    if name == "image_folder":
        return DataConfig(dataset=name, path=str(write_folder(tmp_path / "imgs", classes=("a", "b", "c"))),
                          **extra)
    if name == "records":
        from cnncli.data.pack import pack

        folder = write_folder(tmp_path / "imgs", classes=("a", "b", "c"), colour=True)
        pack(DataConfig(dataset="image_folder", path=str(folder)), str(tmp_path / "packed"), shards=2)
        return DataConfig(dataset=name, path=str(tmp_path / "packed"), **extra)
    raise AssertionError(f"add a small config for the new dataset `{name}` here")


@pytest.mark.parametrize("name", list_datasets())
@pytest.mark.parametrize("conversion", [{}, {"image_size": (12, 10), "color_mode": "rgb"},
                                        {"color_mode": "grayscale"}], ids=["native", "rgb-12x10", "gray"])
def test_describe_agrees_with_load(name, conversion, tmp_path, offline_keras):
    cfg = _config_for(name, tmp_path, **conversion)
    info = describe(cfg)
    ds = load(cfg, seed=3)
    assert isinstance(info, DatasetInfo) and isinstance(ds, Dataset)
    assert info.input_shape == ds.input_shape == ds.x_test.shape[1:] == ds.x_val.shape[1:]
    assert (info.num_classes, info.class_names) == (ds.num_classes, ds.class_names)
    for x, y in ((ds.x_train, ds.y_train), (ds.x_val, ds.y_val), (ds.x_test, ds.y_test)):
        assert x.dtype == np.uint8 and y.dtype == np.int64 and x.ndim == 4 and len(x) == len(y)
        assert y.size == 0 or (y.min() >= 0 and y.max() < ds.num_classes)
    if conversion.get("image_size"):
        assert ds.input_shape == (12, 10, 3)
    if conversion.get("color_mode") == "grayscale":
        assert ds.input_shape[2] == 1


# ---------------------------------------------------------------- validation split and limit

def test_validation_split_is_seeded_and_exact():
    cfg = DataConfig(dataset="shapes", shapes=SMALL_SHAPES, validation_split=0.25)
    a, b, c = load(cfg, seed=1), load(cfg, seed=1), load(cfg, seed=2)
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (45, 15, 30)
    assert np.array_equal(a.x_val, b.x_val) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_val, c.x_val)
    # validation examples are training examples, none used twice
    full = load(cfg.model_copy(update={"validation_split": 0.0}), seed=1)
    rows = {x.tobytes() for x in full.x_train}
    assert {x.tobytes() for x in a.x_val} | {x.tobytes() for x in a.x_train} == rows
    assert not {x.tobytes() for x in a.x_val} & {x.tobytes() for x in a.x_train}


def test_validation_split_zero_gives_empty_arrays_of_the_right_shape():
    ds = load(DataConfig(dataset="shapes", shapes=SMALL_SHAPES, validation_split=0), seed=0)
    assert ds.x_val.shape == (0, 16, 16, 1) and ds.y_val.shape == (0,) and ds.y_val.dtype == np.int64
    assert len(ds.x_train) == 60


def test_validation_indices_never_empty_nor_everything():
    assert [len(v) for v in validation_indices(3, 0.1, 0)] == [2, 1]
    assert [len(v) for v in validation_indices(10, 0.99, 0)] == [1, 9]
    assert [len(v) for v in validation_indices(1, 0.5, 0)] == [1, 0]


def test_limit_caps_every_split_independently_of_the_seed(tmp_path):
    cfg = DataConfig(dataset="npz", path=str(write_npz(tmp_path / "d.npz", n_train=50, n_test=40)),
                     limit=20, validation_split=0.1)
    a, b = load(cfg, seed=1), load(cfg, seed=2)
    assert (len(a.x_train), len(a.x_val), len(a.x_test)) == (18, 2, 20)
    assert np.array_equal(a.x_test, b.x_test)  # the same test subset for every run seed
    with np.load(tmp_path / "d.npz") as f:
        assert np.array_equal(a.x_test[..., 0], f["x_test"][limit_indices(40, 20)])
    small = load(cfg.model_copy(update={"limit": 1000}), seed=1)
    assert (len(small.x_train) + len(small.x_val), len(small.x_test)) == (50, 40)
    assert np.array_equal(limit_indices(50, 10), limit_indices(50, 10))
    assert list(limit_indices(5, 10)) == [0, 1, 2, 3, 4]
    assert list(limit_indices(50, 10)) == sorted(limit_indices(50, 10))


def test_bboxes_follow_limit_split_and_resize():
    from cnncli.data import shapes

    spec = DataConfig(shapes=SMALL_SHAPES).shapes
    _, _, test_boxes = shapes.generate(spec, 30, seed=5, split=1)
    ds = load(DataConfig(dataset="shapes", shapes=SMALL_SHAPES), seed=5)
    assert np.array_equal(ds.bboxes["test"], test_boxes)
    big = load(DataConfig(dataset="shapes", shapes=SMALL_SHAPES, image_size=(32, 32)), seed=5)
    assert np.array_equal(big.bboxes["test"], test_boxes * 2)
    assert set(ds.bboxes) == {"train", "val", "test"} and len(ds.bboxes["val"]) == len(ds.x_val)


# ---------------------------------------------------------------- colour and size conversion

def test_to_channels_matches_pil():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 7, 9, 3), dtype=np.uint8)
    gray = to_channels(rgb, 1)
    expected = np.stack([np.asarray(Image.fromarray(im).convert("L")) for im in rgb])[..., None]
    assert np.array_equal(gray, expected)
    assert np.array_equal(to_channels(gray, 3), np.repeat(gray, 3, axis=-1))


@pytest.mark.parametrize("old, new, channels", [((28, 28), (32, 32), 1), ((64, 48), (20, 30), 3),
                                                 ((7, 9), (100, 3), 1)])
def test_resize_is_pil_bilinear_up_to_rounding(old, new, channels):
    x = np.random.default_rng(1).integers(0, 256, (5, *old, channels), dtype=np.uint8)
    ours = resize(x, new)
    pil = np.stack([np.asarray(Image.fromarray(im[..., 0] if channels == 1 else im).resize(new[::-1],
                                                                                       Image.BILINEAR))
                    for im in x]).reshape(ours.shape)
    assert ours.shape == (5, *new, channels) and ours.dtype == np.uint8
    assert np.abs(ours.astype(int) - pil).max() <= 1  # PIL rounds between its two passes; we round once


def test_convert_images_to_a_model_input():
    images = [np.zeros((20, 30), np.uint8), np.full((5, 5, 4), 200, np.uint8), np.full((8, 8, 3), 0.5)]
    out = convert_images(images, (16, 12, 3))
    assert out.shape == (3, 16, 12, 3) and out.dtype == np.uint8
    assert (out[1] == 200).all()  # alpha dropped, colour kept
    assert (out[2] == 128).all()  # floats in [0, 1] become 0..255
    gray = convert_images(np.full((2, 4, 4, 3), 100, np.uint8), [4, 4, 1])
    assert gray.shape == (2, 4, 4, 1) and (gray == 100).all()


def test_convert_images_rejects_bad_input():
    with pytest.raises(DataError, match="cannot convert images to 2 channels"):
        convert_images([np.zeros((4, 4))], (4, 4, 2))
    with pytest.raises(DataError, match="NaN or infinite"):
        convert_images([np.full((4, 4), np.nan)], (4, 4, 1))


def test_load_resizes_and_converts_colour():
    ds = load(DataConfig(dataset="shapes", shapes=SMALL_SHAPES, image_size=(24, 20), color_mode="rgb"), seed=0)
    assert ds.x_train.shape[1:] == (24, 20, 3)
    assert np.array_equal(ds.x_train[..., 0], ds.x_train[..., 2])  # grey repeated into 3 channels
