"""Resident or streamed: where a split's pixels come from while a model trains and is evaluated.

A split is either a uint8 NHWC array in memory (every source can give one) or
a `FileSplit`: image files, their labels, and the reader that turns one file
into uint8 (H, W, C) pixels at the model's size. The trainer asks a split only
for batches in an order it chooses (`FileSplit.batches`, `splits.labelled_batches`),
so it never knows which kind fed it; a source hands over file lists
(`FileListing`) and never knows whether they are cached.

A `FileSplit` streams with tf.data: per-element `tf.numpy_function` over the
shared reader, `num_parallel_calls=AUTOTUNE` with deterministic order, uint8
end to end, batched and prefetched. With `cache: disk` the first pass writes
the decoded images once into one uint8 .npy file under the cache folder (keyed
by the file list, sizes, mtimes and the target shape); later epochs and later
runs gather batches from it. The file is written first and `done.json` last,
so a writer killed half-way leaves a folder without `done.json`, which the
next run deletes and rebuilds.

A file that cannot be read (corrupt, truncated, vanished) follows
`data.on_corrupt`: with `skip` it is dropped from the stream and listed in
run.json; with `error` the reader records it and `raise_if_failed` turns it
into one `DataError` naming the file at the next chunk boundary (never a
TensorFlow traceback out of a py-function).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli import faults
from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config.schema import DataConfig

CACHE_VERSION = 1  # bumped when the cache layout changes, so old caches are rebuilt, never misread
COMMIT_MARKER = "done.json"  # written last: its absence marks a cache whose writer died
PROGRESS_EVERY = 5.0  # seconds between first-pass progress lines
DECODE_CHUNK = 64  # images per task of the first pass's thread pool

Reader = Callable[[str, str, tuple[int, int]], np.ndarray]  # (path, color_mode, (h, w)) -> uint8 (h, w, c)
Progress = Callable[[int, int, float], None]  # (done, total, seconds)


@dataclass
class FileListing:
    """What a file-backed source hands over instead of pixels: which files, which labels, which shape."""

    class_names: list[str]
    files: dict[str, list[tuple[str, int]]]  # "train"/"test" -> (path, label), in a fixed order
    image_shape: tuple[int, int, int]  # (h, w, c) every image is brought to
    read: Reader
    source: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Health:
    """Files of one split that could not be read, and those read, shared with the split's slices."""

    bad: dict[str, str] = field(default_factory=dict)  # path -> why
    opened: set[str] = field(default_factory=set)  # files this process has read, for run.json
    lock: threading.Lock = field(default_factory=threading.Lock)


class StreamedImages:
    """What a streamed split shows of an image array: len() (its own), shape, dtype and colour mode."""

    image_shape: tuple[int, int, int]

    def __len__(self) -> int:
        raise NotImplementedError  # each kind of split counts its own images

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, height, width, channels), as an image array's."""
        return (len(self), *self.image_shape)

    @property
    def dtype(self) -> np.dtype:
        """uint8, as an image array's."""
        return np.dtype(np.uint8)

    @property
    def color_mode(self) -> str:
        """rgb or grayscale, from the channels."""
        return "rgb" if self.image_shape[2] == 3 else "grayscale"


@dataclass
class FileSplit(StreamedImages):
    """One split as image files on disk, read on demand (cache `none`) or through a disk cache (`disk`)."""

    files: list[str]
    labels: np.ndarray  # int64 (N,)
    image_shape: tuple[int, int, int]
    read: Reader
    on_corrupt: str = "error"
    cache: str = "none"  # "none" | "disk"
    cache_root: Path | None = None
    share_sizes: tuple[int, ...] | None = None  # every worker's share of the training split, when sharded
    health: _Health = field(default_factory=_Health)
    _images: _CacheFile | None = field(default=None, repr=False)  # the disk cache, once opened
    _cached_bad: np.ndarray | None = field(default=None, repr=False)  # bool (N,): unreadable when cached

    # -------------------------------------------------------------- array-like surface
    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> FileSplit:
        """A sub-split (slice or index array); pixels are read only when asked for."""
        picks = np.arange(len(self.files))[index]
        return self._subset(np.atleast_1d(picks))

    def _subset(self, picks: np.ndarray) -> FileSplit:
        """Taken before any cache is opened (shards, --smoke) or for a few images: reads go to the files."""
        return replace(
            self,
            files=[self.files[i] for i in picks],
            labels=self.labels[picks],
            share_sizes=None,
            _images=None,
            _cached_bad=None,
        )

    def to_array(self) -> np.ndarray:
        """Every image in memory (for small subsets: exports' representative sets, smoke checks)."""
        from cnncli.data.splits import collect

        x, _ = collect(self, 256)
        return x

    def astype(self, dtype: Any) -> np.ndarray:
        """Every image, read into an array of `dtype`."""
        return self.to_array().astype(dtype)

    def __array__(self, dtype=None, copy=None):
        x = self.to_array()
        return x if dtype is None else x.astype(dtype)

    def with_shape(self, shape: Sequence[int]) -> FileSplit:
        """The same files read at another (h, w, c): a model whose input differs from the data's size."""
        height, width, channels = (int(d) for d in shape)
        return replace(self, image_shape=(height, width, channels), _images=None, _cached_bad=None)

    def shard(self, worker: int, workers: int) -> FileSplit:
        """This worker's files: every `workers`-th from `worker` on, so shares are disjoint and fixed."""
        shares = tuple(len(range(w, len(self.files), workers)) for w in range(workers))
        sub = self._subset(np.arange(worker, len(self.files), workers))
        sub.share_sizes = shares
        return sub

    # -------------------------------------------------------------- reading
    def read_one(self, index: int) -> tuple[np.ndarray, bool]:
        """Pixels of file `index` and whether it could be read (zeros and False otherwise)."""
        index = int(index)
        if self._images is not None:
            assert self._cached_bad is not None  # opened together with the cache
            return self._images.rows([index])[0], not bool(self._cached_bad[index])
        path = self.files[index]
        if path in self.health.bad:
            return np.zeros(self.image_shape, np.uint8), False
        try:
            pixels = self.read(path, self.color_mode, self.image_shape[:2])
        except DataError as exc:
            with self.health.lock:
                self.health.bad.setdefault(path, _reason(exc, path))
            return np.zeros(self.image_shape, np.uint8), False
        self.health.opened.add(path)
        return pixels, True

    def batches(self, order: np.ndarray, batch_size: int, count: int | None = None) -> Any:
        """tf.data batches of (uint8 images, int32 labels) in `order`, unreadable files left out.

        With `count`, exactly that many whole batches, wrapping around to the start of `order`
        when files were left out (every worker of a distributed run must take the same number
        of steps); without it, every readable image once, the last batch possibly partial.
        """
        import tensorflow as tf

        order = np.asarray(order, np.int64)
        if self._images is not None:  # cached: the unreadable are known, and a batch is one gather
            assert self._cached_bad is not None  # opened together with the cache
            order = order[~self._cached_bad[order]]
            if count is not None:
                order = np.resize(order, count * batch_size) if len(order) else order
            ds = tf.data.Dataset.from_tensor_slices(order).batch(batch_size)
            ds = ds.map(self._gather_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        else:
            ds = tf.data.Dataset.from_tensor_slices(order)
            ds = ds.map(self._read_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            return readable_batches(ds, batch_size, count)
        return _finish(ds)

    def _read_element(self, index):
        import tensorflow as tf

        pixels, ok = tf.numpy_function(self.read_one, [index], [tf.uint8, tf.bool], stateful=False)
        pixels.set_shape(self.image_shape)
        ok.set_shape([])
        return pixels, tf.gather(tf.constant(self.labels.astype(np.int32)), index), ok

    def _gather_batch(self, indices):
        import tensorflow as tf

        pixels = tf.numpy_function(self._images.rows, [indices], tf.uint8, stateful=False)
        pixels.set_shape((None, *self.image_shape))
        return pixels, tf.gather(tf.constant(self.labels.astype(np.int32)), indices)

    # -------------------------------------------------------------- the disk cache
    def cache_key(self) -> str:
        """Changes whenever a file is added, removed, renamed, rewritten, or the target shape changes."""
        digest = hashlib.sha256(json.dumps([CACHE_VERSION, list(self.image_shape)]).encode())
        for path in self.files:
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
        return digest.hexdigest()[:32]

    def open_cache(self, progress: Progress | None = None) -> dict:
        """Use the disk cache for these files, writing it first if it is missing, stale or half-written."""
        assert self.cache_root is not None  # open_data sets it on every streamed split
        folder = self.cache_root / self.cache_key()
        built = False
        if not (folder / COMMIT_MARKER).exists():
            self._write_cache(folder, progress)
            built = True
        marker = json.loads((folder / COMMIT_MARKER).read_text())
        self._images = _CacheFile(folder / "images.npy")
        self._cached_bad = np.zeros(len(self.files), bool)
        for index, why in marker["bad"].items():
            self._cached_bad[int(index)] = True
            self.health.bad.setdefault(self.files[int(index)], why)
        if not built:
            self.health.opened.update(self.files)  # read once, in the run that wrote the cache
        return {"folder": str(folder), "built": built, "bytes": int(self._images.nbytes)}

    def _write_cache(self, folder: Path, progress: Progress | None) -> None:
        if folder.exists():  # no commit marker: its writer was killed; nothing in it can be trusted
            shutil.rmtree(folder)
        try:
            folder.mkdir(parents=True)
            # Written row by row through the page cache: a memory map's dirty pages would count in this
            # process's resident set, growing it by the size of the dataset.
            images = open(folder / "images.npy", "wb")
            np.lib.format.write_array_header_2_0(images, {"descr": "|u1", "fortran_order": False, "shape": self.shape})
        except OSError as exc:
            raise DataError(
                f"{folder}: cannot write the image cache ({exc.strerror or exc}); set data.cache_dir "
                "to a writable folder with room, or data.cache: none"
            ) from None
        bad: dict[str, str] = {}
        t0 = time.perf_counter()
        last = t0
        chunks = [range(i, min(i + DECODE_CHUNK, len(self.files))) for i in range(0, len(self.files), DECODE_CHUNK)]
        done = 0
        # PIL decodes and numpy resizes without the GIL, so threads use every core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for chunk, results in zip(chunks, pool.map(lambda c: [self.read_one(i) for i in c], chunks), strict=True):
                for index, (pixels, ok) in zip(chunk, results, strict=True):
                    images.write(np.ascontiguousarray(pixels, np.uint8).tobytes())
                    if not ok:
                        bad[str(index)] = self.health.bad[self.files[index]]
                done += len(chunk)
                now = time.perf_counter()
                if progress is not None and (now - last >= PROGRESS_EVERY or done == len(self.files)):
                    progress(done, len(self.files), now - t0)
                    last = now
        images.close()
        faults.point("cache_written")
        tmp = folder / f".{COMMIT_MARKER}.tmp-{os.getpid()}"
        tmp.write_text(json.dumps({"files": len(self.files), "shape": list(self.image_shape), "bad": bad}))
        os.replace(tmp, folder / COMMIT_MARKER)


class _CacheFile:
    """Rows of the cache's .npy read with pread: unlike a memory map, pages read stay in the OS's page
    cache and out of this process's resident set, so peak RSS does not grow with the dataset."""

    def __init__(self, path: Path):
        header = np.load(path, mmap_mode="r")  # parses the .npy header; no page is read
        self.shape, self.offset, self.nbytes = header.shape, header.offset, header.nbytes
        self.row = int(np.prod(self.shape[1:]))
        self.fd = os.open(path, os.O_RDONLY)
        del header

    def rows(self, indices) -> np.ndarray:
        out = np.empty((len(indices), *self.shape[1:]), np.uint8)
        flat = out.reshape(len(indices), self.row)
        for k, i in enumerate(indices):
            flat[k] = np.frombuffer(os.pread(self.fd, self.row, self.offset + int(i) * self.row), np.uint8)
        return out


def readable_batches(ds: Any, batch_size: int, count: int | None) -> Any:
    """(pixels, label, ok) elements -> prefetched batches of the readable ones; `count` whole batches
    (wrapping around) when given, else every element once."""
    ds = ds.filter(_readable).map(_without_flag)
    if count is not None:
        ds = ds.repeat().take(count * batch_size)
    return _finish(ds.batch(batch_size, drop_remainder=count is not None))


def _finish(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    # Each worker's pipeline already holds only its share (see `shard`): nothing for TF to shard.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _readable(pixels, label, ok):
    return ok


def _without_flag(pixels, label, ok):
    return pixels, label


def _reason(exc: DataError, path: str) -> str:
    text = str(exc)
    return text[len(path) + 2 :] if text.startswith(f"{path}: ") else text


def split_listing(listing: FileListing, cfg: DataConfig, seed: int) -> dict[str, FileSplit]:
    """train / val / test FileSplits: `limit` and the validation split chosen exactly as for resident data."""
    from cnncli.data.prepare import limit_indices, validation_indices

    def make(pairs: list[tuple[str, int]]) -> FileSplit:
        return FileSplit(
            [str(p) for p, _ in pairs],
            np.array([label for _, label in pairs], np.int64),
            (*listing.image_shape,),
            listing.read,
            cfg.on_corrupt,
            "none",
            None,
        )

    train_all, test_all = listing.files["train"], listing.files["test"]
    keep_train = limit_indices(len(train_all), cfg.limit)
    keep_test = limit_indices(len(test_all), cfg.limit)
    train, val = validation_indices(len(keep_train), cfg.validation_split, seed)
    return {
        "train": make([train_all[i] for i in keep_train[train]]),
        "val": make([train_all[i] for i in keep_train[val]]),
        "test": make([test_all[i] for i in keep_test]),
    }
