"""The Keras datasets, offline: the cache, data.path copies, Debian's Fashion-MNIST, and the failure message."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from test_data_api import write_cifar, write_idx, write_npz

from cnncli.config.schema import DataConfig
from cnncli.data import describe, keras_datasets, load
from cnncli.errors import DataError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def test_class_name_tables():
    assert describe(DataConfig(dataset="mnist")).class_names == [str(i) for i in range(10)]
    assert describe(DataConfig(dataset="fashion_mnist")).class_names == [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert describe(DataConfig(dataset="cifar10")).class_names[:3] == ["airplane", "automobile", "bird"]
    names = describe(DataConfig(dataset="cifar100")).class_names
    assert len(names) == len(set(names)) == 100 and names == sorted(names)
    assert names[:3] == ["apple", "aquarium_fish", "baby"] and names[-1] == "worm"
    assert describe(DataConfig(dataset="cifar10")).input_shape == (32, 32, 3)


def test_mnist_from_the_keras_cache(offline_keras):
    offline_keras.mkdir(parents=True)
    write_npz(offline_keras / "mnist.npz", n_train=20, n_test=10, size=(28, 28), classes=10)
    ds = load(DataConfig(dataset="mnist", validation_split=0), seed=0)
    assert ds.x_train.shape == (20, 28, 28, 1) and ds.x_test.shape == (10, 28, 28, 1)
    assert ds.source == str(offline_keras / "mnist.npz") and ds.class_names[9] == "9"
    assert list(ds.y_test) == list(range(10))


def test_missing_mnist_says_which_file_goes_where(offline_keras):
    with pytest.raises(DataError) as err:
        load(DataConfig(dataset="mnist"), seed=0)
    message = str(err.value)
    assert message.startswith("cannot download mnist: storage.googleapis.com is unreachable")
    assert (f"to work offline, download https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz "
            f"to {offline_keras}/mnist.npz, or set data.path to an offline copy") in message
    assert "\n" not in message


def test_missing_cifar_points_at_the_extracted_folder(offline_keras):
    with pytest.raises(DataError, match=f"extract it into {offline_keras}, giving {offline_keras}/cifar-100-python/"):
        load(DataConfig(dataset="cifar100"), seed=0)


def test_a_failing_keras_download_becomes_a_data_error(offline_keras, monkeypatch, capsys):
    class Socket:
        def close(self):
            pass

    def load_data():
        print("Downloading data from ...")  # Keras talks; we must not
        raise Exception("URL fetch failure on https://...: None -- timed out")

    fake = types.SimpleNamespace(datasets=types.SimpleNamespace(mnist=types.SimpleNamespace(load_data=load_data)))
    monkeypatch.setattr(keras_datasets.socket, "create_connection", lambda address, timeout=None: Socket())
    monkeypatch.setitem(sys.modules, "keras", fake)
    with pytest.raises(DataError, match=r"cannot download mnist \(Exception: URL fetch failure"):
        load(DataConfig(dataset="mnist"), seed=0)
    assert capsys.readouterr().out == ""


def test_mnist_from_data_path_file_or_folder(tmp_path, offline_keras):
    write_npz(tmp_path / "mnist.npz", n_train=8, n_test=4, size=(28, 28), classes=10)
    for path in (tmp_path / "mnist.npz", tmp_path):
        ds = load(DataConfig(dataset="mnist", path=str(path), validation_split=0), seed=0)
        assert (len(ds.x_train), len(ds.x_test)) == (8, 4)
    with pytest.raises(DataError, match="elsewhere: no such file or folder"):
        load(DataConfig(dataset="mnist", path=str(tmp_path / "elsewhere")), seed=0)


def test_a_copy_that_is_not_mnist(tmp_path, offline_keras):
    write_npz(tmp_path / "mnist.npz", size=(10, 10))
    with pytest.raises(DataError, match=r"train split is not mnist: images \(10, 10, 1\) \(expected \(28, 28, 1\)\)"):
        load(DataConfig(dataset="mnist", path=str(tmp_path / "mnist.npz")), seed=0)


def test_fashion_mnist_from_data_path_and_cache(tmp_path, offline_keras):
    write_idx(tmp_path / "copy", n_train=10, n_test=5, size=(28, 28), classes=10)
    ds = load(DataConfig(dataset="fashion_mnist", path=str(tmp_path / "copy"), validation_split=0), seed=0)
    assert (ds.x_train.shape, ds.class_names[0]) == ((10, 28, 28, 1), "T-shirt/top")
    write_idx(offline_keras / "fashion-mnist", n_train=7, n_test=3, size=(28, 28), classes=10)
    ds = load(DataConfig(dataset="fashion_mnist", validation_split=0), seed=0)
    assert (len(ds.x_train), len(ds.x_test), ds.source) == (7, 3, str(offline_keras / "fashion-mnist"))


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_debian():
    ds = load(DataConfig(dataset="fashion_mnist", validation_split=0), seed=0)
    assert ds.source == str(DEBIAN)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    assert list(np.bincount(ds.y_train)) == [6000] * 10 and list(np.bincount(ds.y_test)) == [1000] * 10
    assert ds.class_names[9] == "Ankle boot" and ds.input_shape == (28, 28, 1)


@pytest.mark.parametrize("name, k", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_from_an_extracted_folder(tmp_path, offline_keras, name, k):
    folder = write_cifar(tmp_path, name, n=4)
    ds = load(DataConfig(dataset=name, path=str(tmp_path), validation_split=0), seed=0)
    batches = 5 if name == "cifar10" else 1
    assert ds.x_train.shape == (4 * batches, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
    assert ds.num_classes == k and ds.source == str(tmp_path)
    first = pickle.loads((folder / ("data_batch_1" if name == "cifar10" else "train")).read_bytes())[b"data"][0]
    assert np.array_equal(ds.x_train[0], first.reshape(3, 32, 32).transpose(1, 2, 0))  # channels moved last
    # the same folder found in Keras's cache
    write_cifar(offline_keras, name, n=2)
    assert len(load(DataConfig(dataset=name, validation_split=0), seed=0).x_test) == 2


def test_cifar_pickles_may_only_build_arrays(tmp_path, offline_keras):
    folder = write_cifar(tmp_path, "cifar10")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DataError, match=r"test_batch: not a CIFAR batch \(UnpicklingError: refusing to load "
                                        r"`builtins.print`\)"):
        load(DataConfig(dataset="cifar10", path=str(folder)), seed=0)
    (folder / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3: missing; the extracted CIFAR folder is incomplete"):
        load(DataConfig(dataset="cifar10", path=str(folder)), seed=0)


def test_keras_home_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "a"))
    assert keras_datasets.cache_dir() == tmp_path / "a" / "datasets"
    monkeypatch.delenv("KERAS_HOME")
    assert keras_datasets.cache_dir().name == "datasets"
