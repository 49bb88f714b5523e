"""Probabilities for any number of images, a bounded batch at a time: the one predict loop.

Every model kind (a Keras model in memory, a .keras, SavedModel, LiteRT or ONNX
file) goes through `in_batches`, so memory stays bounded for any dataset size
and every caller gets float32 (N, K) back, an empty (0, K) for no images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

BATCH = 256  # images per call: bounded memory for any dataset size, few calls


def in_batches(run: Callable[[np.ndarray], object], x: Any, classes: int, batch_size: int = BATCH) -> np.ndarray:
    """`run` (one float32 batch -> (n, K) probabilities) over the images `x`, as float32 (N, K)."""
    x = np.asarray(x)
    if len(x) == 0:
        return np.zeros((0, classes), np.float32)
    return np.concatenate(
        [np.asarray(run(x[i : i + batch_size].astype(np.float32)), np.float32) for i in range(0, len(x), batch_size)]
    )


def keras_predict(model: Any, x: Any, batch_size: int = BATCH) -> np.ndarray:
    """A Keras model's probabilities for `x` (inference mode: no dropout, BatchNorm's moving statistics)."""
    return in_batches(lambda batch: model(batch, training=False), x, int(model.outputs[0].shape[-1]), batch_size)


# === Test-time augmentation ===


def _mirror(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images[:, :, ::-1])  # NHWC: the width axis, a horizontal flip


# The extra views each image is predicted on besides itself (config `evaluate.tta`, `cnn evaluate --tta`).
TTA_VIEWS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], ...]] = {"none": (), "flip": (_mirror,)}


def keras_predict_views(model: Any, x: Any, tta: str = "none", batch_size: int = BATCH) -> np.ndarray:
    """(N, V, K): a Keras model's probabilities for each image of `x` (view 0) and each of `tta`'s views."""
    views = TTA_VIEWS[tta]
    classes = int(model.outputs[0].shape[-1])

    def run(batch: np.ndarray) -> np.ndarray:
        probs = [model(batch, training=False), *(model(view(batch), training=False) for view in views)]
        return np.concatenate([np.asarray(p, np.float32) for p in probs], axis=1)

    return in_batches(run, x, classes * (1 + len(views)), batch_size).reshape(-1, 1 + len(views), classes)


def tta_mean(views: np.ndarray) -> np.ndarray:
    """(N, K): the mean of the probabilities over the views of `keras_predict_views`."""
    return views.mean(axis=1, dtype=np.float32)
