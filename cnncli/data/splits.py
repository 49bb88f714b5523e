"""Any split as trainers and evaluators read it, resident (a uint8 array) or streamed (pipeline.FileSplit,
record_stream.RecordSplit): labelled batches in split order, predictions over it, the files it skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cnncli.errors import DataError


def is_streamed(x: Any) -> bool:
    """A split read on demand (FileSplit, record_stream.RecordSplit) rather than an array in memory."""
    return hasattr(x, "batches") and hasattr(x, "health")


def raise_if_failed(x: Any) -> None:
    """With `on_corrupt: error`, the first unreadable file met so far as one DataError naming it."""
    if not is_streamed(x) or x.on_corrupt != "error" or not x.health.bad:
        return
    path = sorted(x.health.bad)[0]
    more = len(x.health.bad) - 1
    raise DataError(
        f"while streaming: {path}: {x.health.bad[path]}{f' (and {more} more)' if more else ''}; "
        "replace or delete it, or set data.on_corrupt: skip"
    )


def labelled_batches(x: Any, y: np.ndarray | None, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(uint8 images, labels) in split order, resident or streamed; unreadable files are left out."""
    if is_streamed(x):
        for images, labels in x.batches(np.arange(len(x)), batch_size).as_numpy_iterator():
            yield images, labels.astype(np.int64)
        raise_if_failed(x)
        return
    assert y is not None  # resident images come with their labels
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def collect(x: Any, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every readable image of a split with its label, as arrays."""
    parts = list(labelled_batches(x, getattr(x, "labels", None), batch_size))
    if not parts:
        return np.zeros((0, *x.image_shape), np.uint8), np.zeros(0, np.int64)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def predict_split(
    predict: Callable[[np.ndarray], np.ndarray], x: Any, y: np.ndarray, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """`predict` over a split in batches: (probabilities, the labels of the images actually read)."""
    probs, labels = [], []
    for images, batch_labels in labelled_batches(x, y, batch_size):
        probs.append(np.asarray(predict(images), np.float32))
        labels.append(batch_labels)
    if not probs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(probs), np.concatenate(labels)


def head(x: Any, k: int) -> np.ndarray:
    """The first k images of a split as an array."""
    if not is_streamed(x):
        return x[:k]
    return next(labelled_batches(x, None, k), (np.zeros((0, *x.image_shape), np.uint8), None))[0]


def skipped(*splits: Any) -> list[str]:
    """Files left out of streamed splits because they could not be read."""
    bad = set()
    for x in splits:
        if is_streamed(x):
            bad.update(x.health.bad)
    return sorted(bad)


def readable_count(x: Any) -> int:
    """The examples a split gives: all of an array; a stream's less the files it could not read so far."""
    if not is_streamed(x):
        return len(x)
    files = getattr(x, "files", None)  # a FileSplit's slices share its record of unreadable files
    bad = x.health.bad
    return len(x) - (sum(f in bad for f in files) if files is not None else len(bad))


def files_opened(x: Any) -> int | None:
    """How many files a streamed split has opened so far; None for arrays in memory."""
    return len(x.health.opened) if is_streamed(x) else None
