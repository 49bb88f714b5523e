"""`records`: TFRecord shards of encoded pictures plus an index.json, as `cnn data pack` writes them.

A records folder (`data.path`: a local folder, or anything `tf.io.gfile`
opens, such as gs://bucket/pack) holds:

    index.json                       written last: its presence means the pack is complete
    train-00000-of-00004.tfrecord    one tf.train.Example per picture
    ...
    test-00000-of-00001.tfrecord

Each Example has `image` (the encoded file: the original bytes of a file, or
a PNG for sources that are arrays), `label` (int64, 0..K-1), `index` (int64,
the picture's position in its split in the source's order) and `name` (the
file's path relative to the source, or `train/123`). Pictures are spread over
the shards of a split in a seeded random order, so every shard holds a mix of
classes and a worker reading some shards still sees every class.

index.json:

    {"format": "cnncli-records", "version": 1, "class_names": [...],
     "splits": {"train": {"count": N, "per_class": [n0, n1, ...], "shards": [file names],
                          "shard_counts": [records in each shard]}, "test": {...}},
     "image_shape": [h, w, c] | null,   # null when sizes differ; c: 3 if any picture is in colour
     "first_size": [h, w],               # the first training picture's size (the size when data.image_size is unset)
     "channels": 1 | 3,
     "made": {"source": ..., "dataset": ..., "date": ISO 8601, "cnncli": version, "seed": ...}}

Reading, resident (`load`): every record is decoded through
`cnncli.images.read_image` in the source's order, exactly as the source
folder would be read (`image_folder.decode_splits`), so training on a pack and
on its folder sees the same arrays.

Reading, streamed (the interface for the tf.data pipeline):

    files = shard_files(path, "train")                # full paths; a listed shard that is missing is a DataError
    ds = tf.data.Dataset.from_tensor_slices(files[worker::workers])
    ds = ds.interleave(tf.data.TFRecordDataset, ...)
    ds = ds.map(parse)                                # serialized Example -> (encoded bytes, int64 label)
    # parse(record, with_name=True) -> (bytes, label, name), for on_corrupt messages
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnncli.config.schema import DataConfig
from cnncli.data.base import DatasetInfo, Source, Splits
from cnncli.errors import DataError

INDEX = "index.json"
FORMAT = "cnncli-records"
VERSION = 1  # bump when a reader of this version could not read what is written
SPLITS = ("train", "test")
SUFFIX = ".tfrecord"


# ---------------------------------------------------------------- paths


def join(root: str, name: str) -> str:
    """`root`/`name` for local folders and URLs (gs://...) alike."""
    return posixpath.join(str(root), name)


def shard_name(split: str, k: int, n: int) -> str:
    """The file name of shard k of n of a split."""
    return f"{split}-{k:05d}-of-{n:05d}{SUFFIX}"


def gfile() -> Any:
    """tf.io.gfile: local paths and every URL scheme TensorFlow has a file system for."""
    import tensorflow as tf

    return tf.io.gfile


@contextlib.contextmanager
def storage(path: str, doing: str) -> Iterator[None]:
    """A file-system failure (permission, network, a full disk) as one DataError naming `path`."""
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as exc:
        raise DataError(f"{path}: cannot {doing} ({exc.message.splitlines()[0]})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot {doing} ({exc.strerror or exc})") from None


# ---------------------------------------------------------------- index


def _root(cfg_or_path) -> str:
    if isinstance(cfg_or_path, DataConfig):
        if not cfg_or_path.path:
            raise DataError("dataset `records` needs `data.path`: a folder written by `cnn data pack`")
        cfg_or_path = cfg_or_path.path
    text = str(cfg_or_path)
    return text if "://" in text else str(Path(text).expanduser())


def read_index(path: DataConfig | str | Path) -> dict:
    """index.json of a records folder, checked; DataError naming the file otherwise."""
    root = _root(path)
    files = gfile()
    index_path = join(root, INDEX)
    with storage(index_path, "read the records index"):
        if not files.exists(index_path):
            if not files.isdir(root):
                raise DataError(
                    f"{root}: no such folder; data.path of `records` must be a folder written by `cnn data pack`"
                )
            raise DataError(
                f"{index_path}: not found; {root} is not a complete records folder (a pack writes "
                "index.json last); pack one with: cnn data pack SOURCE --output DIR"
            )
        with files.GFile(index_path, "r") as f:
            text = f.read()
    try:
        index = json.loads(text)
    except ValueError as exc:
        raise DataError(f"{index_path}: not valid JSON ({exc}); re-pack the data") from None
    problem = _index_problem(index)
    if problem:
        raise DataError(f"{index_path}: {problem}")
    return index


def _index_problem(index) -> str | None:
    repack = "; re-pack the data with cnn data pack"
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        return f'not a cnncli records index (no "format": "{FORMAT}"){repack}'
    if not isinstance(index.get("version"), int) or index["version"] > VERSION:
        return f"format version {index.get('version')!r} is newer than this cnncli reads ({VERSION}); upgrade cnncli"
    names = index.get("class_names")
    if not isinstance(names, list) or len(names) < 2:
        return f"class_names must list at least 2 classes{repack}"
    splits = index.get("splits")
    if not isinstance(splits, dict) or "train" not in splits:
        return f"splits.train is missing{repack}"
    for split, entry in splits.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("shards"), list)
            or not isinstance(entry.get("count"), int)
        ):
            return f"splits.{split} must have a count and a list of shards{repack}"
    return None


def shard_files(path: DataConfig | str | Path, split: str) -> list[str]:
    """Full paths of a split's shards, in order; DataError when a listed shard is missing."""
    root = _root(path)
    index = read_index(root)
    if split not in index["splits"]:
        return []
    files = [join(root, name) for name in index["splits"][split]["shards"]]
    with storage(root, "list the shards"):
        missing = [f for f in files if not gfile().exists(f)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(
            f"{missing[0]}: shard listed in {join(root, INDEX)} is missing{more}; "
            "copy the whole folder again or re-pack the data"
        )
    return files


# ---------------------------------------------------------------- records


def features() -> dict[str, Any]:
    """The tf.train.Example features a record holds."""
    import tensorflow as tf

    return {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "index": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        "name": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }


def parse(record: Any, with_name: bool = False) -> tuple:
    """A serialized Example -> (encoded image bytes, int64 label) [, name]; usable inside Dataset.map."""
    import tensorflow as tf

    example = tf.io.parse_single_example(record, features())
    if with_name:
        return example["image"], example["label"], example["name"]
    return example["image"], example["label"]


def example(image: bytes, label: int, index: int, name: str) -> bytes:
    """One picture as a serialized tf.train.Example."""
    import tensorflow as tf

    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "index": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(index)])),
        "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _fields(record: bytes) -> tuple[int, str, bytes, int]:
    """(index, name, image, label) of a serialized Example; KeyError/IndexError/DecodeError when it is not ours."""
    import tensorflow as tf

    feature = tf.train.Example.FromString(record).features.feature
    index = feature["index"].int64_list.value[0] if "index" in feature else -1
    name = feature["name"].bytes_list.value[0].decode(errors="replace") if "name" in feature else ""
    return index, name, feature["image"].bytes_list.value[0], int(feature["label"].int64_list.value[0])


def read_records(path: str | Path, split: str) -> Iterator[tuple[str, int, str, bytes, int]]:
    """(shard file, index, name, encoded bytes, label) of every record of a split, shard by shard."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    expected = read_index(path)["splits"].get(split, {}).get("shard_counts")
    for k, file in enumerate(shard_files(path, split)):
        n = -1
        try:
            for n, record in enumerate(tf.data.TFRecordDataset(file).as_numpy_iterator()):
                try:
                    yield (file, *_fields(record))
                except (KeyError, IndexError, DecodeError) as exc:
                    raise DataError(
                        f"{file}: record {n}: not a cnncli picture record ({type(exc).__name__}: "
                        f"{exc}); re-pack the data"
                    ) from None
        except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as exc:
            raise DataError(
                f"{file}: damaged after record {n} ({exc.message.splitlines()[0]}); "
                "copy the file again or re-pack the data"
            ) from None
        except tf.errors.OpError as exc:  # permission, network
            raise DataError(f"{file}: cannot read the shard ({exc.message.splitlines()[0]})") from None
        if expected and n + 1 != expected[k]:  # TFRecordDataset ends quietly at a cut-off last record
            raise DataError(
                f"{file}: damaged after record {n} (holds {n + 1} records, index.json lists "
                f"{expected[k]}); copy the file again or re-pack the data"
            )


# ---------------------------------------------------------------- dataset


def _ordered(path, split: str, k: int) -> list[tuple[str, bytes, int]]:
    """A split's records in the source's order: (name for messages, bytes, label)."""
    rows = []
    for file, index, name, data, label in read_records(path, split):
        if not 0 <= label < k:
            raise DataError(f"{file}: record `{name}` has label {label}; index.json lists {k} classes")
        rows.append((index, f"{file}: {name}" if name else file, data, label))
    rows.sort(key=lambda row: row[0])
    return [(name, data, label) for _, name, data, label in rows]


def _load(cfg: DataConfig, seed: int) -> Splits:
    from cnncli.data.image_folder import decode_splits

    root = _root(cfg)
    index = read_index(root)
    names = list(index["class_names"])
    mode = cfg.color_mode or ("rgb" if index.get("channels") == 3 else "grayscale")
    items = {split: _ordered(root, split, len(names)) for split in SPLITS}
    return decode_splits(items, names, root, cfg, mode, [])


def _describe(cfg: DataConfig) -> DatasetInfo:
    index = read_index(_root(cfg))
    shape = index.get("image_shape") or [*(index.get("first_size") or [0, 0]), index.get("channels", 3)]
    if not all(isinstance(d, int) and d > 0 for d in shape) and not cfg.image_size:
        raise DataError(f"{join(_root(cfg), INDEX)}: no image size recorded; set data.image_size")
    height, width, channels = (int(d) for d in shape)
    if cfg.image_size:
        height, width = cfg.image_size
    return DatasetInfo((height, width, channels), len(index["class_names"]), list(index["class_names"]))


SOURCES = {"records": Source(_load, _describe, "TFRecord shards written by `cnn data pack` (data.path)")}
