"""`idx`: MNIST-format files, gzipped or raw, and what happens when they are not."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from test_data_api import idx_bytes, write_idx

from cnncli.config.schema import DataConfig
from cnncli.data import describe, load
from cnncli.errors import DataError


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_idx_folder_loads_exactly(tmp_path, gz):
    arrays = write_idx(tmp_path, n_train=12, n_test=6, size=(5, 4), classes=3, gz=gz)
    ds = load(DataConfig(dataset="idx", path=str(tmp_path), validation_split=0), seed=0)
    assert ds.x_train.shape == (12, 5, 4, 1) and ds.x_test.shape == (6, 5, 4, 1)
    assert np.array_equal(ds.x_train[..., 0], arrays["train"][0])
    assert np.array_equal(ds.y_test, arrays["t10k"][1]) and ds.y_test.dtype == np.int64
    assert ds.class_names == ["0", "1", "2"] and ds.source == str(tmp_path)
    assert describe(DataConfig(dataset="idx", path=str(tmp_path))).input_shape == (5, 4, 1)


def test_dotted_file_names_are_accepted(tmp_path):
    write_idx(tmp_path, gz=False)
    for path in tmp_path.iterdir():
        path.rename(tmp_path / path.name.replace("-idx", ".idx"))  # train-images.idx3-ubyte, as some mirrors name them
    assert load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0).num_classes == 3


def test_wrong_magic_names_file_and_numbers(tmp_path):
    write_idx(tmp_path, gz=False)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)  # a labels file where images belong
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong magic number 0x00000801, "
                                        r"expected 0x00000803 \(IDX images\)"):
        load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0)


def test_truncated_data_is_reported(tmp_path):
    write_idx(tmp_path, gz=True, n_train=12, size=(5, 4))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-7]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated: the header promises 240 bytes "
                                        r"of data for shape \(12, 5, 4\), the file holds 233"):
        load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0)


def test_cut_gzip_stream_and_short_header(tmp_path):
    write_idx(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: cannot read"):
        load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0)
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((2, 3, 3)))[:10]))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz: truncated: the header ends after 10 bytes"):
        load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0)


def test_extra_bytes_and_count_mismatch(tmp_path):
    write_idx(tmp_path, gz=False, n_test=6)
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte: 2 bytes more than the header's shape"):
        load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0)
    path.write_bytes(idx_bytes(np.zeros(5)))
    with pytest.raises(DataError, match="x_test has 6 images but y_test has 5 labels"):
        load(DataConfig(dataset="idx", path=str(tmp_path)), seed=0)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(DataError, match=r"nope: no such folder"):
        load(DataConfig(dataset="idx", path=str(tmp_path / "nope")), seed=0)
    with pytest.raises(DataError, match=r"no `train-images-idx3-ubyte.gz` \(or `train-images-idx3-ubyte`\) here"):
        describe(DataConfig(dataset="idx", path=str(tmp_path)))
