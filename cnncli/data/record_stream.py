"""Streaming a `records` pack (cnncli/data/records.py): TFRecord shards read with tf.data, shard by shard.

A `RecordSplit` is a split of a pack as its shard files plus the source
positions (`index` in each record) that belong to it: the validation split is
carved from train by those positions, exactly as for resident data. Each
epoch the (seed, epoch) permutation the trainer hands over orders the shards
and seeds the shuffle buffer, so a resumed run sees the same batches. Under
several workers each worker reads only shards k, k+W, k+2W, ... (`shard`);
a pack with fewer training shards than workers is an error naming the fix.

Pictures are decoded by the one reader (`cnncli.images.read_image`) on the
encoded bytes; one that cannot be decoded follows data.on_corrupt, as in
`pipeline.FileSplit`. There is no disk cache of decoded pictures for packs:
a pack is already one sequential read per shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncli.data import records
from cnncli.data.pipeline import StreamedImages, _Health, readable_batches
from cnncli.errors import DataError

if TYPE_CHECKING:
    from cnncli.config.schema import DataConfig

SHUFFLE_BUFFER = 2048  # records mixed across the shards being read; a few MB of encoded pictures
CYCLE = 4  # shards read at once by one worker


@dataclass
class RecordSplit(StreamedImages):
    shards: list[str]
    shard_counts: list[int]
    members: np.ndarray  # sorted source positions (records' `index`) in this split
    total: int  # records in the pack's split (positions run 0..total-1)
    labels: np.ndarray  # only len() and max() are meaningful before reading: see `from_index`
    image_shape: tuple[int, int, int]
    read: Callable
    on_corrupt: str = "error"
    cache: str = "none"
    cache_root: object | None = None
    share_sizes: tuple[int, ...] | None = None
    health: _Health = field(default_factory=_Health)

    def __len__(self) -> int:
        return len(self.members)

    def __getitem__(self, index) -> RecordSplit:
        members = self.members[index]
        return replace(self, members=members, labels=self.labels[index], share_sizes=None)

    def with_shape(self, shape: Sequence[int]) -> RecordSplit:
        """The same pictures decoded at another (h, w, c)."""
        height, width, channels = (int(d) for d in shape)
        return replace(self, image_shape=(height, width, channels))

    def shard(self, worker: int, workers: int) -> RecordSplit:
        """This worker's whole shards of the split, or a DataError when there are fewer shards than workers."""
        if len(self.shards) < workers:
            raise DataError(
                f"{self.shards[0].rsplit('/', 1)[0]}: {len(self.shards)} training shard(s) cannot be "
                f"shared by {workers} workers (each reads whole shards); re-pack with "
                f"cnn data pack ... --shards {workers} (or a multiple of it)"
            )
        share = len(self.members) / max(1, self.total)  # the validation split takes its share of every shard
        sizes = tuple(int(sum(self.shard_counts[w::workers]) * share) for w in range(workers))
        return replace(
            self,
            shards=self.shards[worker::workers],
            shard_counts=self.shard_counts[worker::workers],
            share_sizes=sizes,
        )

    # -------------------------------------------------------------- reading
    def _decode(self, data, label, name):
        try:
            return self.read(data, self.color_mode, self.image_shape[:2], name=name.decode()), label, True
        except DataError as exc:
            with self.health.lock:
                self.health.bad.setdefault(name.decode(), str(exc).split(": ", 1)[-1])
            return np.zeros(self.image_shape, np.uint8), label, False

    def batches(self, order: np.ndarray, batch_size: int, count: int | None = None) -> Any:
        """Batches in an order drawn from `order` (the epoch's permutation): shard order and shuffle seed.

        `order` in ascending order (evaluation) reads the shards as packed, unshuffled.
        """
        import tensorflow as tf

        order = np.asarray(order)
        shuffled = bool(len(order)) and not np.array_equal(order, np.arange(len(order)))
        # The epoch's permutation ranks the shards: order[:S] are S distinct numbers when N >= S.
        shard_order = (
            np.argsort(np.resize(order, len(self.shards)), kind="stable") if shuffled else np.arange(len(self.shards))
        )
        files = [self.shards[k] for k in shard_order]
        self.health.opened.update(files)  # this worker opens these shards and no others
        member = np.zeros(self.total, bool)
        member[self.members] = True
        member_t = tf.constant(member)
        ds = tf.data.Dataset.from_tensor_slices(files)
        ds = ds.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(CYCLE, len(files)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        ds = ds.map(_parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.filter(lambda data, label, index, name: member_t[index])
        if shuffled:
            ds = ds.shuffle(SHUFFLE_BUFFER, seed=int(order[0]) * 7919 + int(order[-1]), reshuffle_each_iteration=False)
        ds = ds.map(self._decode_element, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return readable_batches(ds, batch_size, count)

    def _decode_element(self, data, label, index, name):
        import tensorflow as tf

        pixels, label, ok = tf.numpy_function(
            self._decode, [data, label, name], [tf.uint8, tf.int64, tf.bool], stateful=False
        )
        pixels.set_shape(self.image_shape)
        return pixels, tf.cast(tf.reshape(label, []), tf.int32), tf.reshape(ok, [])


def _parse(record):
    import tensorflow as tf

    example = tf.io.parse_single_example(record, records.features())
    return example["image"], example["label"], example["index"], example["name"]


def record_splits(
    cfg: DataConfig, seed: int, image_shape: tuple[int, int, int]
) -> tuple[dict[str, RecordSplit], list[str], str]:
    """train / val / test RecordSplits of the pack at data.path, carved as resident data is."""
    from cnncli.data.prepare import limit_indices, validation_indices
    from cnncli.images import read_image

    root = records._root(cfg)
    index = records.read_index(root)
    names = list(index["class_names"])

    def split_of(name: str, members: np.ndarray) -> RecordSplit:
        entry = index["splits"].get(name, {"shards": [], "shard_counts": [], "count": 0, "per_class": []})
        per_class = entry.get("per_class") or [entry["count"]]
        labels = np.repeat(np.arange(len(per_class)), per_class)[: len(members)]
        return RecordSplit(
            records.shard_files(root, name),
            list(entry.get("shard_counts") or []),
            members,
            int(entry["count"]),
            np.resize(labels, len(members)),
            (*image_shape,),
            read_image,
            cfg.on_corrupt,
        )

    n_train = int(index["splits"]["train"]["count"])
    n_test = int(index["splits"].get("test", {}).get("count", 0))
    keep_train, keep_test = limit_indices(n_train, cfg.limit), limit_indices(n_test, cfg.limit)
    train, val = validation_indices(len(keep_train), cfg.validation_split, seed)
    splits = {
        "train": split_of("train", keep_train[train]),
        "val": split_of("train", keep_train[val]),
        "test": split_of("test", keep_test),
    }
    return splits, names, root
