"""The pictures of a source, as `cnn data pack` and `cnn data inspect` see them.

A command-line SOURCE (an image folder, a records folder or a config file)
becomes a `Catalogue`: per split, every picture's name, label and a way to
get its encoded bytes, without decoding any (files are read as they are,
arrays are encoded as PNG, a pack is read shard by shard). `looked` then
decodes pictures through `cnncli.images` on every core and says what it found:
shape, Pillow mode, or why the picture cannot be read.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnncli import images
from cnncli.config.schema import Config, DataConfig
from cnncli.data import records
from cnncli.errors import DataError

CHUNK = 256  # pictures decoded in parallel at a time
PLACEHOLDER_MODEL = {"layers": [{"type": "Dense", "units": 2}]}  # a folder has no config: lets --set be checked

Progress = Callable[[int, int], None]  # (pictures done, pictures in all)


@dataclass
class Picture:
    """One picture of a source: where it is and how to get its encoded bytes."""

    name: str  # path relative to the source, or split/position for arrays: stored in the record
    label: int
    read: Callable[[], bytes]
    shown: str  # what messages call it: the file's path, or shard and name
    position: int = -1  # a packed picture's place in the source it was packed from


@dataclass
class Catalogue:
    """A source's pictures per split, in the source's order."""

    source: str  # what was packed, for index.json and messages
    dataset: str
    class_names: list[str]
    splits: Mapping[str, list[Picture] | RecordPictures]  # a pack is read lazily, shard by shard
    size_hint: dict[str, int]  # approximate encoded bytes per split, for the default shard count
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- sources


def resolve(source: str | Path, overrides: list[str] | None = None) -> Config:
    """The config a command-line SOURCE means: an image folder, a records folder or a config file.

    Only its `data` section and `seed` (which generated sources such as shapes use) matter here.
    """
    from cnncli.config.loading import apply_overrides, config_from_dict, load_config

    text = str(source)
    path = Path(text).expanduser()
    if "://" in text or (path.is_dir() and (path / records.INDEX).exists()):
        data = {"dataset": "records", "path": text}
    elif path.is_dir():
        data = {"dataset": "image_folder", "path": str(path)}
    elif path.is_file():
        return load_config(path, overrides or [])
    else:
        raise DataError(
            f"{text}: no such folder or config file; give an image folder (one sub-folder per "
            "class), a folder written by cnn data pack, or a config file"
        )
    raw = {"data": data, "model": PLACEHOLDER_MODEL}
    apply_overrides(raw, overrides or [], {})
    return config_from_dict(raw, "source")


def _png_of(x: np.ndarray, i: int) -> bytes:
    return _png(x[i])


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _folder(cfg: DataConfig) -> Catalogue:
    from cnncli.data.image_folder import scan

    found = scan(cfg)
    splits = {
        split: [
            Picture(path.relative_to(found.root).as_posix(), label, path.read_bytes, str(path))
            for path, label in found.files[split]
        ]
        for split in records.SPLITS
    }
    hint = {split: sum(p.stat().st_size for p, _ in found.files[split]) for split in records.SPLITS}
    return Catalogue(str(found.root), "image_folder", found.class_names, splits, hint, list(found.warnings))


@dataclass
class RecordPictures:
    """A packed split, read shard by shard when iterated (a pack may not fit in memory)."""

    cfg: DataConfig
    split: str
    count: int

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        for file, position, name, data, label in records.read_records(self.cfg, self.split):
            yield Picture(
                name or f"{self.split}/{position}", label, (lambda data=data: data), f"{file}: {name}", position
            )

    def in_order(self) -> list[Picture]:
        """Every picture in memory, in the order of the source it was packed from."""
        return sorted(self, key=lambda picture: picture.position)


def _records(cfg: DataConfig) -> Catalogue:
    index = records.read_index(cfg)
    splits, hint = {}, {}
    for split in records.SPLITS:
        entry = index["splits"].get(split, {"count": 0})
        splits[split] = RecordPictures(cfg, split, entry["count"])
        with records.storage(str(cfg.path), "list the shards"):
            hint[split] = sum(records.gfile().stat(f).length for f in records.shard_files(cfg, split))
    return Catalogue(str(cfg.path), "records", list(index["class_names"]), splits, hint)


def _arrays(cfg: DataConfig, seed: int) -> Catalogue:
    from cnncli.data import SOURCES

    if cfg.dataset not in SOURCES:
        raise DataError(SOURCES.unknown_message(cfg.dataset))
    found = SOURCES.get(cfg.dataset).load(cfg, seed)
    splits: dict[str, list[Picture]] = {}
    hint: dict[str, int] = {}
    for split in records.SPLITS:
        x, y = getattr(found, f"x_{split}"), getattr(found, f"y_{split}")
        splits[split] = [
            Picture(f"{split}/{i}", int(y[i]), functools.partial(_png_of, x, i), f"{found.source} {split}/{i}")
            for i in range(len(x))
        ]
        hint[split] = int(x.nbytes)
    return Catalogue(found.source, cfg.dataset, list(found.class_names), splits, hint, list(found.warnings))


def catalogue(cfg: DataConfig, seed: int = 0) -> Catalogue:
    """Every picture of the source `cfg` names, per split, without decoding any; `seed` for generated data."""
    if cfg.dataset == "image_folder":
        return _folder(cfg)
    if cfg.dataset == "records":
        return _records(cfg)
    return _arrays(cfg, seed)


# ---------------------------------------------------------------- checking


@dataclass
class Looked:
    """What decoding one picture found: its bytes and shape, or why it cannot be read."""

    data: bytes = b""
    shape: tuple[int, int, int] | None = None  # (height, width, channels) as read_image gives it
    mode: str = ""  # Pillow's mode
    error: str = ""


def look(picture: Picture) -> Looked:
    """Read and decode one picture; never raises for a bad picture."""
    name = picture.shown
    try:
        data = picture.read()
    except OSError as exc:
        return Looked(error=f"{exc.strerror or exc}")
    try:
        header = images.probe(data, name=name)
        pixels = images.read_image(data, name=name)
    except images.CorruptImage as exc:
        return Looked(data, error=exc.reason)
    height, width, channels = (int(d) for d in pixels.shape)
    return Looked(data, (height, width, channels), header.mode)


def looked(
    pictures: Iterable[Picture], progress: Callable[[int], None] | None = None
) -> Iterable[tuple[Picture, Looked]]:
    """(picture, what decoding found) in the given order, decoded on every core, CHUNK in memory at a time."""
    pictures = iter(pictures)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
        while chunk := list(itertools.islice(pictures, CHUNK)):
            results = list(pool.map(look, chunk))
            if progress:
                progress(len(chunk))
            yield from zip(chunk, results, strict=True)


def counter(progress: Progress | None, total: int) -> Callable[[int], None] | None:
    """A step(n) callback reporting (done, total) to `progress`."""
    if progress is None:
        return None
    done = [0]

    def step(n: int) -> None:
        done[0] += n
        progress(done[0], total)

    progress(0, total)
    return step


@contextlib.contextmanager
def progress_display(label: str, show: bool = True) -> Any:
    """A (done, total) callback drawing a Rich bar on a terminal, else a plain line every 10%.

    Both on stderr: stdout holds only the result, so `cnn data inspect DIR > counts.txt` (or piped into
    another program) gets the report alone, and the progress still shows.
    """
    import sys

    if not show:
        yield None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("pictures"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    shown = [-1]

    def plain(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"{label}: {done:,}/{total:,} pictures", file=sys.stderr, flush=True)

    yield plain
