"""`cnn data pack`: any source into TFRecord shards of encoded pictures (the `records` format).

The source is an image folder, a records folder, or a config file whose
`data:` section names any dataset. Files are stored as they are on disk
(their original bytes); array sources (shapes, mnist, npz, ...) as PNG.
Every picture is decoded once on the way, through `cnncli.images`, so a pack
holds no unreadable picture: a corrupt file stops the pack, naming it, unless
`data.on_corrupt: skip` (then it is left out and listed). The source config's
`limit`, `validation_split`, `image_size` and `color_mode` are not applied:
they apply when training from the pack, as they would on the source.

Writing is atomic: shards go to hidden temporary names and are renamed when
all are complete, then index.json is written last (also via a temporary
name), so a folder with an index.json is always a whole pack.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from cnncli import __version__, images
from cnncli.config import Config, DataConfig
from cnncli.data import records
from cnncli.errors import DataError

PACK_SEED = 0  # the order pictures are spread over shards: fixed, so packing twice gives the same shards
SHARD_BYTES = 100 * 2 ** 20  # default shard size: TensorFlow's guide suggests 100 MB+ per file for streaming
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


@dataclass
class Catalogue:
    """A source's pictures per split, in the source's order."""

    source: str  # what was packed, for index.json and messages
    dataset: str
    class_names: list[str]
    splits: dict[str, list[Picture]]
    size_hint: dict[str, int]  # approximate encoded bytes per split, for the default shard count
    warnings: list[str] = field(default_factory=list)


@dataclass
class PackResult:
    output: str
    index: dict
    skipped: list[tuple[str, str]]  # (name, reason) left out under on_corrupt: skip
    warnings: list[str]

    def as_json(self) -> dict:
        return {"output": self.output, "index": self.index,
                "skipped": [{"path": n, "reason": r} for n, r in self.skipped], "warnings": self.warnings}


# ---------------------------------------------------------------- sources

def resolve(source: str | Path, overrides: Optional[list[str]] = None) -> Config:
    """The config a command-line SOURCE means: an image folder, a records folder or a config file.

    Only its `data` section and `seed` (which generated sources such as shapes use) matter here.
    """
    from cnncli.config import apply_overrides, config_from_dict, load_config

    text = str(source)
    path = Path(text).expanduser()
    if "://" in text or (path.is_dir() and (path / records.INDEX).exists()):
        data = {"dataset": "records", "path": text}
    elif path.is_dir():
        data = {"dataset": "image_folder", "path": str(path)}
    elif path.is_file():
        return load_config(path, overrides or [])
    else:
        raise DataError(f"{text}: no such folder or config file; give an image folder (one sub-folder per "
                        "class), a folder written by cnn data pack, or a config file")
    raw = {"data": data, "model": PLACEHOLDER_MODEL}
    apply_overrides(raw, overrides or [], {})
    return config_from_dict(raw, "source")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _folder(cfg: DataConfig) -> Catalogue:
    from cnncli.data.image_folder import scan

    found = scan(cfg)
    splits = {split: [Picture(path.relative_to(found.root).as_posix(), label, path.read_bytes, str(path))
                      for path, label in found.files[split]] for split in records.SPLITS}
    hint = {split: sum(p.stat().st_size for p, _ in found.files[split]) for split in records.SPLITS}
    return Catalogue(str(found.root), "image_folder", found.class_names, splits, hint, list(found.warnings))


def _records(cfg: DataConfig) -> Catalogue:
    index = records.read_index(cfg)
    splits, hint = {}, {}
    for split in records.SPLITS:
        rows = sorted(records.read_records(cfg, split), key=lambda row: row[1])
        splits[split] = [Picture(name or f"{split}/{i}", label, (lambda data=data: data), f"{file}: {name}")
                         for i, (file, _, name, data, label) in enumerate(rows)]
        hint[split] = sum(len(row[3]) for row in rows)
    return Catalogue(str(cfg.path), "records", list(index["class_names"]), splits, hint)


def _arrays(cfg: DataConfig, seed: int) -> Catalogue:
    from cnncli.data import SOURCES

    if cfg.dataset not in SOURCES:
        raise DataError(SOURCES.unknown_message(cfg.dataset))
    found = SOURCES.get(cfg.dataset).load(cfg, seed)
    splits, hint = {}, {}
    for split in records.SPLITS:
        x, y = getattr(found, f"x_{split}"), getattr(found, f"y_{split}")
        splits[split] = [Picture(f"{split}/{i}", int(y[i]), (lambda i=i, x=x: _png(x[i])),
                                 f"{found.source} {split}/{i}") for i in range(len(x))]
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
    return Looked(data, tuple(int(d) for d in pixels.shape), header.mode)


def looked(pictures: list[Picture], progress: Optional[Callable[[int], None]] = None
           ) -> Iterable[tuple[Picture, Looked]]:
    """(picture, what decoding found) in the given order, decoded on every core."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # Pillow decodes without the GIL
        for start in range(0, len(pictures), CHUNK):
            chunk = pictures[start:start + CHUNK]
            results = list(pool.map(look, chunk))
            if progress:
                progress(len(chunk))
            yield from zip(chunk, results)


# ---------------------------------------------------------------- writing

def shard_count(requested: Optional[int], count: int, size_hint: int) -> int:
    """Shards for a split: as requested (at most one per picture), else one per ~100 MB."""
    if count == 0:
        return 0
    wanted = requested if requested else math.ceil(size_hint / SHARD_BYTES)
    return max(1, min(int(wanted), count))


def _temporary(path: str) -> str:
    folder, name = os.path.split(path)
    return records.join(folder, f".{name}.tmp-{os.getpid()}")


def _check_output(output: str) -> None:
    gfile = records._gfile()
    if gfile.exists(records.join(output, records.INDEX)):
        raise DataError(f"{output}: already holds a pack (index.json); choose another --output or delete it")
    if gfile.exists(output) and not gfile.isdir(output):
        raise DataError(f"{output}: is a file; --output must be a folder")
    try:
        gfile.makedirs(output)
    except Exception as exc:  # tf.errors.* for object stores, OSError for local disks
        raise DataError(f"{output}: cannot create the folder ({getattr(exc, 'message', exc)})") from None


def _shape_summary(shapes: dict[str, dict[int, tuple[int, int, int]]]) -> dict:
    """image_shape (when uniform), first_size (the first training picture's, in source order) and channels."""
    every = [shape for split in shapes.values() for shape in split.values()]
    channels = 3 if any(s[2] == 3 for s in every) else 1
    first = shapes["train"][min(shapes["train"])][:2]
    uniform = len({s[:2] for s in every}) == 1
    return {"image_shape": [*first, channels] if uniform else None, "first_size": list(first), "channels": channels}


def _write_split(pictures: list[Picture], n: int, temps: list[str], k: int,
                 step: Optional[Callable[[int], None]]) -> tuple[np.ndarray, dict, list]:
    """Decode and write one split, spread over n shards in a seeded order.

    Returns pictures per class, records per shard, {source position: shape} and the skipped (name, reason).
    """
    import tensorflow as tf

    order = np.random.default_rng(PACK_SEED).permutation(len(pictures))
    per_class, per_shard, shapes, skipped = np.zeros(k, np.int64), [0] * n, {}, []
    writers = [tf.io.TFRecordWriter(t) for t in temps]
    try:
        kept = 0
        for position, (picture, result) in zip(order, looked([pictures[i] for i in order], step)):
            if result.error:
                skipped.append((picture.shown, result.error))
                continue
            writers[kept % n].write(records.example(result.data, picture.label, int(position), picture.name))
            per_shard[kept % n] += 1
            per_class[picture.label] += 1
            shapes[int(position)] = result.shape
            kept += 1
    finally:
        for writer in writers:
            writer.close()
    return per_class, per_shard, shapes, skipped


def pack(cfg: DataConfig, output: str, shards: Optional[int] = None, progress: Optional[Progress] = None,
         seed: int = 0) -> PackResult:
    """Write the source `cfg` names into records shards under `output`; index.json last."""
    if shards is not None and shards < 1:
        raise DataError(f"--shards must be at least 1, got {shards}")
    found = catalogue(cfg, seed)
    output = str(output).rstrip("/") if "://" in str(output) else str(Path(output).expanduser())
    _check_output(output)
    total = sum(len(p) for p in found.splits.values())
    step = _counter(progress, total)
    gfile = records._gfile()
    written: list[tuple[str, str]] = []  # (temporary, final), removed again unless the pack completes
    skipped: list[tuple[str, str]] = []
    entries, shapes = {}, {}
    try:
        for split in records.SPLITS:
            pictures = found.splits[split]
            n = shard_count(shards, len(pictures), found.size_hint.get(split, 0))
            names = [records.shard_name(split, k, n) for k in range(n)]
            temps = [_temporary(records.join(output, name)) for name in names]
            written += [(t, records.join(output, name)) for t, name in zip(temps, names)]
            per_class, per_shard, shapes[split], bad = _write_split(pictures, n, temps, len(found.class_names), step)
            skipped += bad
            entries[split] = {"count": int(per_class.sum()), "per_class": per_class.tolist(), "shards": names,
                              "shard_counts": per_shard}
        if skipped and cfg.on_corrupt == "error":
            name, why = sorted(skipped)[0]
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            raise DataError(f"{name}: cannot read image ({why}){more}; replace or delete it, "
                            "or pack with --set data.on_corrupt=skip to leave it out")
        if not shapes["train"]:
            raise DataError(f"{found.source}: no readable training pictures to pack")
        index = {"format": records.FORMAT, "version": records.VERSION, "class_names": found.class_names,
                 "splits": entries, **_shape_summary(shapes),
                 "made": {"source": found.source, "dataset": found.dataset,
                          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                          "cnncli": __version__, "seed": seed, "shards": shards}}
        for temp, final in written:
            gfile.rename(temp, final, overwrite=True)
        written = []
        index_path = records.join(output, records.INDEX)
        with gfile.GFile(_temporary(index_path), "w") as f:
            f.write(json.dumps(index, indent=2) + "\n")
        gfile.rename(_temporary(index_path), index_path, overwrite=True)
    finally:
        for temp, _ in written:  # an error or an interrupt: no half-written shard is left behind
            if gfile.exists(temp):
                gfile.remove(temp)
    return PackResult(output, index, sorted(skipped), found.warnings)


def _counter(progress: Optional[Progress], total: int) -> Optional[Callable[[int], None]]:
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
def progress_display(label: str, show: bool = True):
    """A (done, total) callback drawing a Rich bar on a terminal, else a plain line every 10% (stdout, as training)."""
    import sys

    if not show:
        yield None
        return
    if sys.stdout.isatty():
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("pictures"),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task(label, total=None)
            yield lambda done, total: bar.update(task, completed=done, total=total)
        return
    shown = [-1]

    def plain(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > shown[0]:
            shown[0] = tenth
            print(f"{label}: {done:,}/{total:,} pictures", flush=True)
    yield plain
