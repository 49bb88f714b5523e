"""The shapes of data every source hands over, and the checks they share.

A source returns `Splits` (train and test, as found on disk or generated);
`cnncli.data.prepare` turns them into the `Dataset` the rest of the program
sees. Pixels are uint8 0..255 in NHWC order and labels int64 0..K-1 at every
step: the model itself starts with a Rescaling layer, so nothing here
normalises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnncli.errors import DataError


@dataclass
class Dataset:
    """Everything training and evaluation need from the data: resident arrays or streamed file splits."""

    x_train: np.ndarray  # uint8 (N, H, W, C), raw pixel values 0..255; or a pipeline.FileSplit
    y_train: np.ndarray  # int64 (N,), labels 0..K-1
    x_val: np.ndarray  # carved from train by data.validation_split; may hold 0 examples
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str  # where the data came from, for run.json and messages
    warnings: list[str] = field(default_factory=list)  # e.g. skipped corrupt images
    bboxes: dict[str, np.ndarray] | None = None  # shapes only: split -> (N, 4) top, left, bottom, right
    paths: dict[str, list[str]] | None = None  # image_folder only: split -> the file of each example
    cache: dict | None = None  # resident or streamed, and why (residency.choose_cache), for run.json
    skipped: list[str] = field(default_factory=list)  # resident: files left out as unreadable (on_corrupt: skip)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of every image."""
        height, width, channels = (int(d) for d in self.x_train.shape[1:])
        return height, width, channels

    @property
    def num_classes(self) -> int:
        """How many classes there are."""
        return len(self.class_names)


@dataclass
class DatasetInfo:
    """What a model needs to know about the data, found without loading it."""

    input_shape: tuple[int, int, int]
    num_classes: int
    class_names: list[str]


@dataclass
class Splits:
    """A source's train and test arrays, before conversion, limit and validation split."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    source: str
    warnings: list[str] = field(default_factory=list)
    bboxes: dict[str, np.ndarray] | None = None  # "train"/"test" -> (N, 4)
    paths: dict[str, list[str]] | None = None  # "train"/"test" -> file of each example (image folders)
    unreadable: dict[str, list[int]] | None = None  # "train"/"test" -> positions left out (on_corrupt: skip)


@dataclass(frozen=True)
class Source:
    """One entry of the dataset registry."""

    load: Callable[..., Splits]  # (cfg: DataConfig, seed: int) -> Splits
    describe: Callable[..., DatasetInfo]  # (cfg: DataConfig) -> DatasetInfo, before conversion
    summary: str  # one line for `list_datasets` style listings
    files: Callable[..., Any] | None = None  # (cfg) -> pipeline.FileListing, for sources that can stream


SHOWN = 5  # paths listed in one message before "…"


def listing(paths: list, shown: int = SHOWN) -> str:
    """The first `shown` paths, comma-separated, with the total when there are more."""
    text = ", ".join(str(p) for p in paths[:shown])
    return text + (f", … ({len(paths)} in all)" if len(paths) > shown else "")


def skipped_warning(names: list[str]) -> str:
    """The warning for pictures left out under data.on_corrupt: skip, read into memory or streamed."""
    return f"skipped {len(names)} unreadable image(s): {listing(sorted(names))}"


def digit_names(k: int) -> list[str]:
    """Class names for classes named by their index: '0', '1', ..."""
    return [str(i) for i in range(k)]


def as_images(x: np.ndarray, where: str) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) numbers -> uint8 NHWC 0..255, or a DataError naming `where`."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]  # grayscale stored without a channel axis (MNIST style)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise DataError(
            f"{where}: expected images shaped (N, H, W) or (N, H, W, C) with C 1 or 3, "
            f"got {x.shape}; store channels last (NHWC)"
        )
    if x.dtype == np.uint8:
        return x
    if x.dtype == np.bool_:
        return x.astype(np.uint8) * 255
    if np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{where}: integer pixels must lie in 0..255, found {x.min()}..{x.max()}")
        return x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{where}: pixels must be numbers, got dtype {x.dtype}")
    if x.size == 0:
        return x.astype(np.uint8)
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise DataError(f"{where}: {bad} pixels are NaN or infinite; fix or drop those images")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{where}: float pixels must lie in [0, 1] or [0, 255], found {lo:g}..{hi:g}")
    if hi <= 1.0:
        x = x * 255.0  # [0, 1] floats are the common Keras-tutorial convention
    return np.rint(x).astype(np.uint8)


def as_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Integer labels (N,), (N, 1) or one-hot (N, K) -> int64 (N,), or a DataError naming `where`."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # CIFAR style column of labels
    elif y.ndim == 2 and y.shape[1] > 1:
        y = np.argmax(y, axis=1)  # one-hot rows
    if y.ndim != 1:
        raise DataError(f"{where}: expected labels shaped (N,), (N, 1) or one-hot (N, K), got {y.shape}")
    if y.dtype == np.bool_ or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise DataError(f"{where}: labels must be integers 0..K-1, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if y.size and (not np.isfinite(y).all() or (y != np.round(y)).any()):
            raise DataError(f"{where}: labels must be whole numbers 0..K-1, found fractional or NaN values")
    if y.size and y.min() < 0:
        raise DataError(f"{where}: labels must be 0 or more, found {y.min():g}; map them to 0..K-1 first")
    return y.astype(np.int64)


def check_pair(x: np.ndarray, y: np.ndarray, where: str, split: str) -> None:
    """A DataError unless `x` and `y` hold as many images as labels."""
    if len(x) != len(y):
        raise DataError(
            f"{where}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels; they must match one to one"
        )


def num_classes_of(*labels: np.ndarray) -> int:
    """K for labels 0..K-1 spread over several splits (1 when all are empty)."""
    highest = max((int(y.max()) for y in labels if y.size), default=0)
    return highest + 1
