"""`image_folder`: one sub-folder of images per class, as Keras's image_dataset_from_directory reads them.

Layouts: `path/train/<class>/…` plus optional `path/test/<class>/…`, or
`path/<class>/…` alone. Without a test folder, 20% of each class becomes the
test split, chosen by a hash of each file's path so the choice survives
re-runs, other seeds and added files. Sub-folders inside a class folder are
read too. Class names are the sorted folder names.

Every image is read by `cnncli.images.read_image` (EXIF rotation, 16-bit,
palette, alpha on white; the reader `cnn predict` uses) and brought to one
size and one colour mode: `data.image_size` and `data.color_mode` when set,
else the first image's size and RGB if any image is in colour (grayscale
otherwise).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import images
from cnncli.config.schema import DataConfig
from cnncli.data.base import DatasetInfo, Source, Splits
from cnncli.data.base import listing as _listing
from cnncli.data.pipeline import FileListing
from cnncli.errors import DataError
from cnncli.images import EXTENSIONS, CorruptImage

TEST_FRACTION = 0.2  # share of each class held out when there is no test folder


@dataclass
class Scan:
    """What is on disk, before any pixel is read."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # "train"/"test" -> (path, label), sorted
    warnings: list[str] = field(default_factory=list)


def _walk(folder: Path, root: Path, follow: bool, outside: list[Path], seen: set[Path]) -> list[Path]:
    """Image files under `folder`, sorted; links leaving `root` go to `outside` unless `follow`."""
    found = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):  # .DS_Store, ._AppleDouble, editor droppings
            continue
        if entry.is_symlink() and not follow and not entry.resolve().is_relative_to(root):
            outside.append(entry)
            continue
        if entry.is_dir():
            real = entry.resolve()
            if real not in seen:  # a link back up the tree would loop forever
                seen.add(real)
                found += _walk(entry, root, follow, outside, seen)
        elif entry.suffix.lower() in EXTENSIONS:
            found.append(entry)
    return found


def _class_dirs(folder: Path, root: Path, follow: bool, outside: list[Path]) -> dict[str, Path]:
    dirs = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not follow and not entry.resolve().is_relative_to(root):
            outside.append(entry)
            continue
        dirs[entry.name] = entry
    return dirs


def _held_out(path: Path, root: Path) -> str:
    return hashlib.sha1(path.relative_to(root).as_posix().encode()).hexdigest()


def _carve(per_class: dict[str, list[Path]], names: list[str], root: Path) -> dict[str, list[tuple[Path, int]]]:
    """Hold out TEST_FRACTION of each class (at least one image of any class with two or more)."""
    files: dict[str, list[tuple[Path, int]]] = {"train": [], "test": []}
    for label, name in enumerate(names):
        paths = per_class[name]
        n_test = max(1, round(TEST_FRACTION * len(paths))) if len(paths) >= 2 else 0
        held = set(sorted(paths, key=lambda p: _held_out(p, root))[:n_test])
        files["train"] += [(p, label) for p in paths if p not in held]
        files["test"] += [(p, label) for p in paths if p in held]
    return files


def scan(cfg: DataConfig) -> Scan:
    """Find the classes and their files, and decide the train/test split, reading no pixels."""
    if not cfg.path:
        raise DataError("dataset `image_folder` needs `data.path`: a folder with one sub-folder per class")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such folder; data.path must be a folder with one sub-folder per class")
    real_root, follow = root.resolve(), cfg.follow_symlinks
    outside: list[Path] = []
    split_layout = (root / "train").is_dir()
    train_root = root / "train" if split_layout else root
    classes = _class_dirs(train_root, real_root, follow, outside)
    names = sorted(classes)
    if len(names) < 2:
        found = f"only `{names[0]}`" if names else "none"
        raise DataError(
            f"{train_root}: a classifier needs at least 2 class folders, found {found}; "
            "put each class's images in its own sub-folder"
        )
    seen = {real_root, *(folder.resolve() for folder in classes.values())}  # links to these are not re-read
    per_class = {name: _walk(classes[name], real_root, follow, outside, seen) for name in names}
    empty = [f"`{name}`" for name in names if not per_class[name]]
    if empty:
        raise DataError(
            f"{train_root}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
            f"{'have' if len(empty) > 1 else 'has'} no images ({', '.join(EXTENSIONS)}); "
            "add images or remove the folder"
        )
    if split_layout and (root / "test").is_dir():
        test_classes = _class_dirs(root / "test", real_root, follow, outside)
        unknown = sorted(set(test_classes) - set(names))
        if unknown:
            raise DataError(
                f"{root / 'test'}: class folder(s) {', '.join(unknown)} are not in {train_root}; "
                "the test classes must be training classes"
            )
        files = {
            "train": [(p, label) for label, name in enumerate(names) for p in per_class[name]],
            "test": [
                (p, label)
                for label, name in enumerate(names)
                if name in test_classes
                for p in _walk(test_classes[name], real_root, follow, outside, seen)
            ],
        }
    else:
        files = _carve(per_class, names, root)
    warnings = []
    if outside:
        warnings.append(
            f"skipped {len(outside)} link(s) leading outside {root}: {_listing(outside)}; "
            "set data.follow_symlinks: true to follow them"
        )
    loose = [p for p in sorted(train_root.iterdir()) if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if loose:
        warnings.append(f"ignored {len(loose)} image(s) outside any class folder: {_listing(loose)}")
    return Scan(root, names, files, warnings)


def _target_mode(cfg: DataConfig, paths: list[Path]) -> str:
    """cfg.color_mode, else "rgb" as soon as one image header says colour."""
    if cfg.color_mode:
        return cfg.color_mode
    for path in paths:
        try:
            if images.is_colour_file(path):
                return "rgb"
        except CorruptImage:
            continue  # the reading pass reports it
    return "grayscale"


def _first_size(paths: list[Path]) -> tuple[int, int] | None:
    """(height, width) of the first image whose header reads, upright as read_image returns it."""
    for path in paths:
        try:
            return images.probe(path)[:2]
        except CorruptImage:
            continue
    return None


def _read_each(items: Iterable[tuple[str, images.Source, int]], mode: str):
    """(name, label, pixels or None, why not) per item, in order, decoded on every core (Pillow frees the GIL)."""

    def read(item):
        name, source, label = item
        try:
            return name, label, images.read_image(source, mode, name=name), ""
        except CorruptImage as exc:
            return name, label, None, exc.reason

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        yield from pool.map(read, items)


def decode_splits(
    items: Mapping[str, Iterable[tuple[str, images.Source, int]]],
    class_names: list[str],
    where: str,
    cfg: DataConfig,
    mode: str,
    warnings: list[str],
) -> Splits:
    """Pictures (name, path or encoded bytes, label) per split -> Splits, applying data.on_corrupt.

    Every picture is read in `mode` and brought to data.image_size, else to
    the first readable picture's size. `dataset: records` decodes through here
    too, so a packed folder gives the arrays the folder gives.

    An unreadable picture keeps its place (zeros, listed in `Splits.unreadable`) until
    `prepare` has chosen the limit and the validation split: the splits are then those a
    stream of the same files gets, which leaves the unreadable out only as it meets them.
    """
    size = tuple(cfg.image_size) if cfg.image_size else None
    channels = 3 if mode == "rgb" else 1
    bad: list[tuple[str, str]] = []
    resized = 0
    arrays: dict[str, Any] = {}
    names: dict[str, Any] = {}
    unreadable: dict[str, Any] = {}
    for split in ("train", "test"):
        pictures: list[Any] = []
        labels: list[Any] = []
        names[split], unreadable[split] = [], []
        for name, label, pixels, reason in _read_each(items[split], mode):
            if pixels is None:
                bad.append((name, reason))
                unreadable[split].append(len(pictures))
            else:
                if size is None:
                    size = pixels.shape[:2]  # the first readable image sets the size
                if pixels.shape[:2] != size:
                    pixels = images.resize(pixels, size)  # as read_image(path, mode, size) would
                    resized += 1
            pictures.append(pixels)
            labels.append(label)
            names[split].append(name)
        blank = np.zeros((*(size or (1, 1)), channels), np.uint8)
        pictures = [blank if p is None else p for p in pictures]
        arrays[split] = (
            np.stack(pictures) if pictures else np.zeros((0, *blank.shape), np.uint8),
            np.array(labels, np.int64),
        )
    warnings = list(warnings)
    bad.sort()
    if bad and cfg.on_corrupt == "error":
        name, why = bad[0]
        more = f" (and {len(bad) - 1} more: {_listing([n for n, _ in bad[1:]])})" if len(bad) > 1 else ""
        raise DataError(f"{name}: cannot read image ({why}){more}; replace or delete it, or set data.on_corrupt: skip")
    if resized and not cfg.image_size:
        assert size is not None  # the first readable image set it
        warnings.append(
            f"{resized} image(s) were not {size[0]}x{size[1]} (the first image's size) and were "
            "resized; set data.image_size to choose the size"
        )
    readable = np.ones(len(arrays["train"][1]), bool)
    readable[unreadable["train"]] = False
    counts = np.bincount(arrays["train"][1][readable], minlength=len(class_names))
    lost = [name for name, count in zip(class_names, counts, strict=True) if count == 0]
    if lost:
        raise DataError(
            f"{where}: class(es) {', '.join(lost)} have no readable training images left; replace the unreadable files"
        )
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    return Splits(
        x_train, y_train, x_test, y_test, list(class_names), where, warnings, paths=names, unreadable=unreadable
    )


def _read_all(scan_: Scan, cfg: DataConfig) -> Splits:
    all_paths = [p for split in ("train", "test") for p, _ in scan_.files[split]]
    items = {split: ((str(path), path, label) for path, label in scan_.files[split]) for split in ("train", "test")}
    return decode_splits(items, scan_.class_names, str(scan_.root), cfg, _target_mode(cfg, all_paths), scan_.warnings)


def _load(cfg: DataConfig, seed: int) -> Splits:
    return _read_all(scan(cfg), cfg)


def _describe(cfg: DataConfig, found: Scan | None = None) -> DatasetInfo:
    found = found or scan(cfg)
    paths = [p for split in ("train", "test") for p, _ in found.files[split]]
    mode = _target_mode(cfg, paths)
    size = tuple(cfg.image_size) if cfg.image_size else _first_size(paths)
    if size is None:
        raise DataError(f"{found.root}: none of the images can be read")
    return DatasetInfo((size[0], size[1], 3 if mode == "rgb" else 1), len(found.class_names), found.class_names)


def _files(cfg: DataConfig) -> FileListing:
    """The files to stream, each read by the one reader at the size and colour mode resident data gets."""
    found = scan(cfg)
    info = _describe(cfg, found)
    files = {split: [(str(p), label) for p, label in pairs] for split, pairs in found.files.items()}
    return FileListing(found.class_names, files, info.input_shape, images.read_image, str(found.root), found.warnings)


SOURCES = {"image_folder": Source(_load, _describe, "one sub-folder of images per class (data.path)", _files)}
