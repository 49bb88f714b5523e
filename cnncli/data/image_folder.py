"""`image_folder`: one sub-folder of images per class, as Keras's image_dataset_from_directory reads them.

Layouts: `path/train/<class>/…` plus optional `path/test/<class>/…`, or
`path/<class>/…` alone. Without a test folder, 20% of each class becomes the
test split, chosen by a hash of each file's path so the choice survives
re-runs, other seeds and added files. Sub-folders inside a class folder are
read too. Class names are the sorted folder names.

Every image is brought to one size and one colour mode: `data.image_size` and
`data.color_mode` when set, else the first image's size and RGB if any image
is in colour (grayscale otherwise).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cnncli.config import DataConfig
from cnncli.data.base import DatasetInfo, Source, Splits
from cnncli.data.pipeline import FileListing
from cnncli.data.prepare import resize_image
from cnncli.errors import DataError

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
TEST_FRACTION = 0.2  # share of each class held out when there is no test folder
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F")
SHOWN = 5  # paths listed in one message before "…"


@dataclass
class Scan:
    """What is on disk, before any pixel is read."""

    root: Path
    class_names: list[str]
    files: dict[str, list[tuple[Path, int]]]  # "train"/"test" -> (path, label), sorted
    warnings: list[str] = field(default_factory=list)


def _listing(paths: list, shown: int = SHOWN) -> str:
    text = ", ".join(str(p) for p in paths[:shown])
    return text + (f", … ({len(paths)} in all)" if len(paths) > shown else "")


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
    real_root, follow, outside = root.resolve(), cfg.follow_symlinks, []
    split_layout = (root / "train").is_dir()
    train_root = root / "train" if split_layout else root
    classes = _class_dirs(train_root, real_root, follow, outside)
    names = sorted(classes)
    if len(names) < 2:
        found = f"only `{names[0]}`" if names else "none"
        raise DataError(f"{train_root}: a classifier needs at least 2 class folders, found {found}; "
                        "put each class's images in its own sub-folder")
    seen = {real_root, *(folder.resolve() for folder in classes.values())}  # links to these are not re-read
    per_class = {name: _walk(classes[name], real_root, follow, outside, seen) for name in names}
    empty = [f"`{name}`" for name in names if not per_class[name]]
    if empty:
        raise DataError(f"{train_root}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                        f"{'have' if len(empty) > 1 else 'has'} no images ({', '.join(EXTENSIONS)}); "
                        "add images or remove the folder")
    if split_layout and (root / "test").is_dir():
        test_classes = _class_dirs(root / "test", real_root, follow, outside)
        unknown = sorted(set(test_classes) - set(names))
        if unknown:
            raise DataError(f"{root / 'test'}: class folder(s) {', '.join(unknown)} are not in {train_root}; "
                            "the test classes must be training classes")
        files = {"train": [(p, label) for label, name in enumerate(names) for p in per_class[name]],
                 "test": [(p, label) for label, name in enumerate(names) if name in test_classes
                          for p in _walk(test_classes[name], real_root, follow, outside, seen)]}
    else:
        files = _carve(per_class, names, root)
    warnings = []
    if outside:
        warnings.append(f"skipped {len(outside)} link(s) leading outside {root}: {_listing(outside)}; "
                        "set data.follow_symlinks: true to follow them")
    loose = [p for p in sorted(train_root.iterdir()) if p.is_file() and p.suffix.lower() in EXTENSIONS]
    if loose:
        warnings.append(f"ignored {len(loose)} image(s) outside any class folder: {_listing(loose)}")
    return Scan(root, names, files, warnings)


def is_colour(image: Image.Image) -> bool:
    """Colour by mode; a palette counts as colour when any of its entries is not grey."""
    if image.mode in GRAY_MODES:
        return False
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
        return bool((palette != palette[:, :1]).any())
    return True


READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)  # PIL's ways of failing


def _decode(path: Path | str, mode: str | None) -> np.ndarray:
    with Image.open(path) as image:
        image.load()  # decode now: truncated files fail here, not later
        colour = is_colour(image) if mode is None else mode == "rgb"
        pixels = np.asarray(image.convert("RGB" if colour else "L"), np.uint8)
    return pixels if pixels.ndim == 3 else pixels[..., None]


def read_image(path: Path | str, mode: str | None = None) -> np.ndarray:
    """One image file as uint8 (H, W, C): C 3 for colour, 1 for grey, or as `mode` ("rgb"/"grayscale") asks.

    Unreadable files raise DataError naming the path. Only the first frame of
    an animated GIF is read.
    """
    try:
        return _decode(path, mode)
    except READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc or type(exc).__name__})") from None


def read_file(path: str, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One file in `mode` at `size` (h, w), for streaming: PIL's own bilinear resize, ~25× faster on
    one image than the batched matrix resize of `prepare.resize` and within 1 of its values."""
    try:
        with Image.open(path) as image:
            image.load()
            image = image.convert("RGB" if mode == "rgb" else "L")
            if image.size != (size[1], size[0]):
                image = image.resize((int(size[1]), int(size[0])), Image.BILINEAR)
            pixels = np.asarray(image, np.uint8)
    except READ_ERRORS as exc:
        raise DataError(f"{path}: cannot read image ({exc or type(exc).__name__})") from None
    return pixels if pixels.ndim == 3 else pixels[..., None]


def _target_mode(cfg: DataConfig, paths: list[Path]) -> str:
    """cfg.color_mode, else "rgb" as soon as one image header says colour."""
    if cfg.color_mode:
        return cfg.color_mode
    for path in paths:
        try:
            with Image.open(path) as image:
                if is_colour(image):
                    return "rgb"
        except READ_ERRORS:
            continue  # the reading pass reports it
    return "grayscale"


def _first_size(paths: list[Path]) -> tuple[int, int] | None:
    for path in paths:
        try:
            with Image.open(path) as image:
                return image.size[1], image.size[0]
        except READ_ERRORS:
            continue
    return None


def _read_all(scan_: Scan, cfg: DataConfig) -> Splits:
    all_paths = [p for split in ("train", "test") for p, _ in scan_.files[split]]
    mode = _target_mode(cfg, all_paths)
    size = tuple(cfg.image_size) if cfg.image_size else None
    channels = 3 if mode == "rgb" else 1
    bad: list[tuple[Path, str]] = []
    resized = 0
    arrays = {}
    for split in ("train", "test"):
        images, labels = [], []
        for path, label in scan_.files[split]:
            try:
                pixels = _decode(path, mode)
            except READ_ERRORS as exc:
                bad.append((path, str(exc) or type(exc).__name__))
                continue
            if size is None:
                size = pixels.shape[:2]  # the first readable image sets the size
            if pixels.shape[:2] != size:
                pixels = resize_image(pixels, size)
                resized += 1
            images.append(pixels)
            labels.append(label)
        shape = (0, *(size or (1, 1)), channels)
        arrays[split] = (np.stack(images) if images else np.zeros(shape, np.uint8), np.array(labels, np.int64))
    warnings = list(scan_.warnings)
    bad.sort()
    if bad and cfg.on_corrupt == "error":
        path, why = bad[0]
        more = f" (and {len(bad) - 1} more: {_listing([p for p, _ in bad[1:]])})" if len(bad) > 1 else ""
        raise DataError(f"{path}: cannot read image ({why}){more}; replace or delete it, "
                        "or set data.on_corrupt: skip")
    if bad:
        warnings.append(f"skipped {len(bad)} unreadable image(s): {_listing([p for p, _ in bad])}")
    if resized and not cfg.image_size:
        warnings.append(f"{resized} image(s) were not {size[0]}x{size[1]} (the first image's size) and were "
                        "resized; set data.image_size to choose the size")
    counts = np.bincount(arrays["train"][1], minlength=len(scan_.class_names))
    lost = [name for name, count in zip(scan_.class_names, counts) if count == 0]
    if lost:
        raise DataError(f"{scan_.root}: class(es) {', '.join(lost)} have no readable training images left; "
                        "replace the unreadable files")
    (x_train, y_train), (x_test, y_test) = arrays["train"], arrays["test"]
    return Splits(x_train, y_train, x_test, y_test, scan_.class_names, str(scan_.root), warnings)


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
    found = scan(cfg)
    info = _describe(cfg, found)
    files = {split: [(str(p), label) for p, label in pairs] for split, pairs in found.files.items()}
    return FileListing(found.class_names, files, info.input_shape, read_file, str(found.root), found.warnings)


SOURCES = {"image_folder": Source(_load, _describe, "one sub-folder of images per class (data.path)", _files)}
