"""`idx`: a folder of MNIST-format IDX files, gzipped or raw.

The format (yann.lecun.com/exdb/mnist): a big-endian header of two zero
bytes, a type code (0x08 = unsigned byte), the number of dimensions, then one
uint32 per dimension, then the data. Images are 3-D (N, rows, cols), labels
1-D (N,). The same reader serves Fashion-MNIST's files.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from cnncli.config.schema import DataConfig
from cnncli.data.base import DatasetInfo, Source, Splits, as_labels, check_pair, digit_names, num_classes_of
from cnncli.errors import DataError

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
SPLITS = {"train": "train", "test": "t10k"}  # our split name -> the file prefix MNIST uses


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def find_file(folder: Path, prefix: str, kind: str) -> Path:
    """`train-images-idx3-ubyte[.gz]` (or the `train-images.idx3-ubyte` spelling) in `folder`."""
    ndim = 3 if kind == "images" else 1
    stems = [f"{prefix}-{kind}-idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte"]
    for stem in stems:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise DataError(
        f"{folder}: no `{stems[0]}.gz` (or `{stems[0]}`) here; an idx folder needs "
        "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte, each optionally gzipped"
    )


def read_header(path: Path, magic: int) -> tuple[int, ...]:
    """The dimensions from an IDX header, after checking its magic number."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: truncated: only {len(head)} bytes, not even an IDX header")
            found = struct.unpack(">I", head)[0]
            if found != magic:
                raise DataError(
                    f"{path}: wrong magic number 0x{found:08x}, expected 0x{magic:08x} "
                    f"(IDX {'images' if magic == IMAGES_MAGIC else 'labels'}); "
                    "is this the right file, and not a labels/images mix-up?"
                )
            ndim = magic & 0xFF
            raw = f.read(4 * ndim)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read: {exc}") from None
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated: the header ends after {4 + len(raw)} bytes")
    return struct.unpack(f">{ndim}I", raw)


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The whole array of an IDX file, checked against its header's size."""
    dims = read_header(path, magic)
    offset = 4 + 4 * len(dims)
    try:
        with _open(path) as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # a gzip stream cut short raises EOFError
        raise DataError(f"{path}: cannot read ({exc}); the file is probably truncated, download it again") from None
    expected = int(np.prod(dims))
    got = len(data) - offset
    if got < expected:
        raise DataError(
            f"{path}: truncated: the header promises {expected} bytes of data "
            f"for shape {tuple(dims)}, the file holds {got}; download it again"
        )
    if got > expected:
        raise DataError(
            f"{path}: {got - expected} bytes more than the header's shape {tuple(dims)} "
            "declares; the file is damaged or not IDX"
        )
    return np.frombuffer(data, np.uint8, count=expected, offset=offset).reshape(dims)


def _folder(cfg: DataConfig, default: str | None = None) -> Path:
    raw = cfg.path or default
    if not raw:
        raise DataError("dataset `idx` needs `data.path`: the folder holding the IDX files")
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; set data.path to the folder holding the IDX files")
    return folder


def read_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x_train (N, H, W, 1), y_train, x_test, y_test from the four files in `folder`."""
    arrays = []
    for prefix in SPLITS.values():
        images_path, labels_path = find_file(folder, prefix, "images"), find_file(folder, prefix, "labels")
        x = read_idx(images_path, IMAGES_MAGIC)[..., None]
        y = as_labels(read_idx(labels_path, LABELS_MAGIC), str(labels_path))
        check_pair(x, y, f"{images_path} and {labels_path.name}", "train" if prefix == "train" else "test")
        arrays += [x, y]
    x_train, y_train, x_test, y_test = arrays
    return x_train, y_train, x_test, y_test


def describe_folder(folder: Path) -> tuple[tuple[int, int, int], int]:
    """Input shape from the image header, class count from the (small) label files."""
    _, rows, cols = read_header(find_file(folder, "train", "images"), IMAGES_MAGIC)
    labels = [read_idx(find_file(folder, p, "labels"), LABELS_MAGIC) for p in SPLITS.values()]
    return (rows, cols, 1), num_classes_of(*labels)


def _load(cfg: DataConfig, seed: int) -> Splits:
    folder = _folder(cfg)
    x_train, y_train, x_test, y_test = read_folder(folder)
    return Splits(x_train, y_train, x_test, y_test, digit_names(num_classes_of(y_train, y_test)), str(folder))


def _describe(cfg: DataConfig) -> DatasetInfo:
    shape, k = describe_folder(_folder(cfg))
    return DatasetInfo(shape, k, digit_names(k))


SOURCES = {"idx": Source(_load, _describe, "a folder of MNIST-format IDX files (data.path)")}
