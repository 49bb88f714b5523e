"""What happens to every source's arrays on their way to the model.

In this order: `limit` (a fixed-seed subset of each split, so every run
evaluates on the same examples), the validation split (a seeded
permutation of the training examples), then `color_mode` and `image_size`.
The same conversions serve `cnn predict` through `convert_images`, so a
picture is treated there exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cnncli import images
from cnncli.config.schema import DataConfig
from cnncli.data.base import Dataset, Splits, as_images, skipped_warning
from cnncli.errors import DataError
from cnncli.images import with_channels as to_channels

LIMIT_SEED = 0  # limit's subset must not depend on the run seed: runs stay comparable
CHANNELS = {"grayscale": 1, "rgb": 3}


def resize(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 NHWC images to (height, width) = size, each through images.resize: a split resized here is
    pixel for pixel what `cnn predict` makes of the same picture."""
    height, width = int(size[0]), int(size[1])
    if x.shape[1:3] == (height, width):
        return x
    out = np.empty((len(x), height, width, x.shape[-1]), np.uint8)
    for i, image in enumerate(x):
        out[i] = images.resize(image, (height, width))
    return out


def convert(x: np.ndarray, height: int, width: int, channels: int) -> np.ndarray:
    """uint8 NHWC to (N, height, width, channels), resizing while there are fewer channels."""
    if channels > x.shape[-1]:
        return to_channels(resize(x, (height, width)), channels)
    return resize(to_channels(x, channels), (height, width))


def convert_images(x: Any, input_shape: Sequence[int]) -> np.ndarray:
    """Arbitrary images to a model's (height, width, channels): uint8 (N, h, w, c).

    `x` is one array (N, H, W) or (N, H, W, C), or a list of (H, W) or
    (H, W, C) arrays of any sizes; C may be 1, 3 or 4 (alpha is dropped).
    Floats in [0, 1] are scaled to 0..255.
    """
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise DataError(f"cannot convert images to {channels} channels; models here take 1 (grayscale) or 3 (rgb)")
    if isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[-1] in (1, 3):
        return convert(x, height, width, channels)  # a whole split: no per-image checks
    if isinstance(x, (list, tuple)) or (isinstance(x, np.ndarray) and x.ndim in (3, 4)):
        items = list(x)
    else:
        raise DataError(
            f"expected a batch of images (N, H, W[, C]) or a list of (H, W[, C]) arrays, "
            f"got {type(x).__name__} {np.shape(x)}"
        )
    out = np.empty((len(items), height, width, channels), np.uint8)
    for i, image in enumerate(items):
        image = np.asarray(image)
        if image.ndim not in (2, 3):
            raise DataError(f"image {i}: expected (H, W) or (H, W, C), got shape {image.shape}")
        if image.ndim == 3 and image.shape[-1] == 4:
            image = image[..., :3]  # RGBA: the model has no use for transparency
        image = as_images(image[None], f"image {i}")[0]
        out[i] = convert(image[None], height, width, channels)[0]
    return out


def converted_shape(shape: Sequence[int], cfg: DataConfig) -> tuple[int, int, int]:
    """A source's (H, W, C) after `image_size` and `color_mode`."""
    height, width = cfg.image_size or shape[:2]
    channels = CHANNELS[cfg.color_mode] if cfg.color_mode else shape[2]
    return int(height), int(width), int(channels)


def limit_indices(n: int, limit: int | None) -> np.ndarray:
    """Which of n examples to keep: all, or `limit` of them chosen by a fixed seed, in their order."""
    if limit is None or n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(LIMIT_SEED).permutation(n)[:limit])


def validation_indices(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: round(fraction * n) examples for validation, chosen by a seeded permutation."""
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)  # a requested split never ends up empty, nor takes everything
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def training_class_warnings(
    y_train: np.ndarray, y_source: np.ndarray, class_names: list[str], cfg: DataConfig
) -> list[str]:
    """A warning when the training split (after data.limit and data.validation_split) has fewer examples than
    classes, or no example of some class: the model can never learn to predict such a class.

    A warning, not an error: quick runs (data.limit, --smoke in CI) train on a handful of images on purpose,
    and the run is still a valid model whose evaluation shows the class's recall of 0.
    `y_source` is the training labels before limit and split, to tell what they took from what never was.
    """
    n, k = len(y_train), len(class_names)
    if n == 0:
        return []  # refused by the job: "the training split is empty"
    missing = sorted(set(range(k)) - set(np.unique(y_train).tolist()))
    if not missing and n >= k:
        return []
    limited = cfg.limit is not None and cfg.limit < len(y_source)
    causes, fixes = [], []
    if limited:
        causes.append(f"data.limit {cfg.limit}")
        fixes.append("raise data.limit")
    if cfg.validation_split > 0:
        causes.append(f"data.validation_split {cfg.validation_split:g}")
        fixes.insert(0, "lower data.validation_split")
    text = f"the training split holds {n:,} example(s) of {k} classes" + (
        f" after {' and '.join(causes)}" if causes else ""
    )
    if missing:
        text += f"; no training example of {_names(missing, class_names)}, which the model cannot learn to predict"
    never = sorted(set(missing) - set(np.unique(y_source).tolist()))
    if never:
        fixes.append(f"add training images of {_names(never, class_names)}")
    return [text + (f"; {' or '.join(fixes)}" if fixes else "")]


def _names(indices: list[int], class_names: list[str], shown: int = 5) -> str:
    text = ", ".join(f"`{class_names[i]}`" for i in indices[:shown])
    return text + (f" and {len(indices) - shown} more" if len(indices) > shown else "")


def _scale_boxes(boxes: np.ndarray, old: Sequence[int], new: Sequence[int]) -> np.ndarray:
    """(top, left, bottom, right) boxes from an old (H, W) to a new one, rounded outwards."""
    fy, fx = new[0] / old[0], new[1] / old[1]
    out = boxes.astype(np.float64) * np.array([fy, fx, fy, fx])
    out[:, :2], out[:, 2:] = np.floor(out[:, :2]), np.ceil(out[:, 2:])
    return np.minimum(out, np.array([new[0], new[1], new[0], new[1]])).astype(np.int64)


def prepare(splits: Splits, cfg: DataConfig, seed: int) -> Dataset:
    """Limit, carve validation, convert colour and size: a source's Splits become a Dataset."""
    boxes = dict(splits.bboxes) if splits.bboxes else None
    keep_train = limit_indices(len(splits.x_train), cfg.limit)
    keep_test = limit_indices(len(splits.x_test), cfg.limit)
    train, val = validation_indices(len(keep_train), cfg.validation_split, seed)
    picks = {"train": keep_train[train], "val": keep_train[val], "test": keep_test}
    split_warnings = training_class_warnings(
        splits.y_train[picks["train"]], splits.y_train, list(splits.class_names), cfg
    )
    source_of = {"train": "train", "val": "train", "test": "test"}
    arrays, out_boxes, out_paths, skipped = {}, {}, {}, []
    old = splits.x_train.shape[1:3]
    target = converted_shape(splits.x_train.shape[1:], cfg)
    for split, index in picks.items():
        unreadable = (splits.unreadable or {}).get(source_of[split])
        if unreadable and splits.paths is not None:  # chosen, then left out as a stream would
            bad = np.isin(index, unreadable)
            skipped += [splits.paths[source_of[split]][i] for i in index[bad]]
            index = index[~bad]
        x = getattr(splits, f"x_{source_of[split]}")[index]
        y = getattr(splits, f"y_{source_of[split]}")[index]
        x = convert(x, *target)
        arrays[split] = (x, y.astype(np.int64))
        if boxes is not None:
            out_boxes[split] = _scale_boxes(boxes[source_of[split]][index], old, target[:2])
        if splits.paths is not None:
            out_paths[split] = [splits.paths[source_of[split]][i] for i in index]
    warnings = [*splits.warnings, *split_warnings]
    if skipped:
        warnings.append(skipped_warning(skipped))
    return Dataset(
        *arrays["train"],
        *arrays["val"],
        *arrays["test"],
        class_names=list(splits.class_names),
        source=splits.source,
        warnings=warnings,
        bboxes=out_boxes or None,
        paths=out_paths or None,
        skipped=sorted(skipped),
    )
