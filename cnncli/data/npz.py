"""`npz`: one NumPy archive holding x_train, y_train, x_test, y_test.

Images may be uint8 0..255, other integers in that range, or floats in
[0, 1] or [0, 255]; (N, H, W) gets a channel axis. Labels are integers
0..K-1, a (N, 1) column, or one-hot rows. An optional `class_names` array
names the classes. Pickled (object) arrays are refused.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cnncli.config.schema import DataConfig
from cnncli.data.base import DatasetInfo, Source, Splits, as_images, as_labels, check_pair, digit_names, num_classes_of
from cnncli.errors import DataError

REQUIRED = ("x_train", "y_train", "x_test", "y_test")


def _file(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise DataError("dataset `npz` needs `data.path`: the .npz file holding x_train, y_train, x_test, y_test")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file; set data.path to an .npz file holding x_train, y_train, x_test, y_test")
    return path


def _open(path: Path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path}: holds a single array, not an .npz archive; "
            "save it with np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    missing = [name for name in REQUIRED if name not in archive.files]
    if missing:
        archive.close()
        raise DataError(
            f"{path}: no array {', '.join(f'`{m}`' for m in missing)}; the file has "
            f"{', '.join(archive.files) or 'no arrays'}; it needs {', '.join(REQUIRED)}"
        )
    return archive


def _read(archive, path: Path, name: str) -> np.ndarray:
    try:
        return archive[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: array `{name}` cannot be read ({exc}); "
            "object (pickled) arrays are not accepted, store numbers or strings"
        ) from None


def _num_classes(raw_labels: list[np.ndarray]) -> int:
    """K from labels 0..K-1, or from the width of one-hot rows (a class may have no examples)."""
    k = num_classes_of(*[as_labels(y, "labels") for y in raw_labels])
    widths = [y.shape[1] for y in raw_labels if y.ndim == 2 and y.shape[1] > 1]
    return max([k, *widths])


def _class_names(archive, path: Path, k: int) -> list[str]:
    if "class_names" not in archive.files:
        return digit_names(k)
    names = [str(n) for n in np.asarray(_read(archive, path, "class_names")).ravel()]
    if len(names) < k:
        raise DataError(
            f"{path}: `class_names` has {len(names)} names but the labels go up to {k - 1}; give at least {k} names"
        )
    return names


def _load(cfg: DataConfig, seed: int) -> Splits:
    path = _file(cfg)
    with _open(path) as archive:
        arrays, raw_labels = {}, []
        for split in ("train", "test"):
            x = as_images(_read(archive, path, f"x_{split}"), f"{path}: x_{split}")
            raw_labels.append(_read(archive, path, f"y_{split}"))
            y = as_labels(raw_labels[-1], f"{path}: y_{split}")
            check_pair(x, y, str(path), split)
            arrays[split] = (x, y)
        if arrays["train"][0].shape[1:] != arrays["test"][0].shape[1:]:
            raise DataError(
                f"{path}: x_train images are {arrays['train'][0].shape[1:]} but x_test images are "
                f"{arrays['test'][0].shape[1:]}; both splits need one size"
            )
        names = _class_names(archive, path, _num_classes(raw_labels))
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    return Splits(x_train, y_train, x_test, y_test, names, str(path))


def _header_shape(path: Path, name: str) -> tuple[int, ...]:
    """An array's shape from its .npy header inside the zip, without reading the data."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(f)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read the header of `{name}` ({exc})") from None
    return shape


def _describe(cfg: DataConfig) -> DatasetInfo:
    path = _file(cfg)
    with _open(path) as archive:
        shape = _header_shape(path, "x_train")
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
            raise DataError(
                f"{path}: x_train: expected images shaped (N, H, W) or (N, H, W, C) "
                f"with C 1 or 3, got {shape}; store channels last (NHWC)"
            )
        labels = [_read(archive, path, f"y_{s}") for s in ("train", "test")]
        for split, y in zip(("train", "test"), labels, strict=True):
            as_labels(y, f"{path}: y_{split}")  # the same complaints as load
        names = _class_names(archive, path, _num_classes(labels))
    input_shape = (shape[1], shape[2], shape[3] if len(shape) == 4 else 1)
    return DatasetInfo(input_shape, len(names), names)


SOURCES = {"npz": Source(_load, _describe, "a NumPy .npz archive of x_train, y_train, x_test, y_test (data.path)")}
