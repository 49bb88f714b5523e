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

import datetime
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli import __version__
from cnncli.config.schema import DataConfig
from cnncli.data import records
from cnncli.data.catalogue import Catalogue, Picture, Progress, RecordPictures, catalogue, counter, looked
from cnncli.errors import DataError
from cnncli.fileio import absolute

PACK_SEED = 0  # the order pictures are spread over shards: fixed, so packing twice gives the same shards
SHARD_BYTES = 100 * 2**20  # default shard size: TensorFlow's guide suggests 100 MB+ per file for streaming


@dataclass
class PackResult:
    output: str
    index: dict
    skipped: list[tuple[str, str]]  # (name, reason) left out under on_corrupt: skip
    warnings: list[str]

    def as_json(self) -> dict:
        """The result as `--json` prints it."""
        return {
            "output": absolute(self.output),
            "index": self.index,
            "skipped": [{"path": n, "reason": r} for n, r in self.skipped],
            "warnings": self.warnings,
        }


# ---------------------------------------------------------------- writing


def shard_count(requested: int | None, count: int, size_hint: int) -> int:
    """Shards for a split: as requested (at most one per picture), else one per ~100 MB."""
    if count == 0:
        return 0
    wanted = requested if requested else math.ceil(size_hint / SHARD_BYTES)
    return max(1, min(int(wanted), count))


def _temporary(path: str) -> str:
    folder, name = os.path.split(path)
    return records.join(folder, f".{name}.tmp-{os.getpid()}")


def _check_output(output: str) -> None:
    files = records.gfile()
    if files.exists(records.join(output, records.INDEX)):
        raise DataError(f"{output}: already holds a pack (index.json); choose another --output or delete it")
    if files.exists(output) and not files.isdir(output):
        raise DataError(f"{output}: is a file; --output must be a folder")
    files.makedirs(output)


def _publish(written: list[tuple[str, str]], output: str, index: dict) -> None:
    """Rename every finished shard to its name, then write index.json (itself through a temporary name)."""
    files = records.gfile()
    for temp, final in written:
        files.rename(temp, final, overwrite=True)
    index_path = records.join(output, records.INDEX)
    with files.GFile(_temporary(index_path), "w") as f:
        f.write(json.dumps(index, indent=2) + "\n")
    files.rename(_temporary(index_path), index_path, overwrite=True)


def _shape_summary(shapes: dict[str, dict[int, tuple[int, int, int]]]) -> dict:
    """image_shape (when uniform), first_size (the first training picture's, in source order) and channels."""
    every = [shape for split in shapes.values() for shape in split.values()]
    channels = 3 if any(s[2] == 3 for s in every) else 1
    first = shapes["train"][min(shapes["train"])][:2]
    uniform = len({s[:2] for s in every}) == 1
    return {"image_shape": [*first, channels] if uniform else None, "first_size": list(first), "channels": channels}


def _write_split(
    pictures: list[Picture] | RecordPictures, n: int, temps: list[str], k: int, step: Callable[[int], None] | None
) -> tuple[np.ndarray, list[int], dict[int, tuple[int, int, int]], list[tuple[str, str]]]:
    """Decode and write one split, spread over n shards in a seeded order.

    Returns pictures per class, records per shard, {source position: shape} and the skipped (name, reason).
    """
    import tensorflow as tf

    if isinstance(pictures, RecordPictures):  # re-sharding a pack: its pictures in the source's order
        pictures = pictures.in_order()
    order = np.random.default_rng(PACK_SEED).permutation(len(pictures))
    per_class, per_shard = np.zeros(k, np.int64), [0] * n
    shapes: dict[int, tuple[int, int, int]] = {}
    skipped: list[tuple[str, str]] = []
    writers = [tf.io.TFRecordWriter(t) for t in temps]
    try:
        kept = 0
        for position, (picture, result) in zip(order, looked([pictures[i] for i in order], step), strict=True):
            if result.error:
                skipped.append((picture.shown, result.error))
                continue
            writers[kept % n].write(records.example(result.data, picture.label, int(position), picture.name))
            per_shard[kept % n] += 1
            per_class[picture.label] += 1
            assert result.shape is not None  # a picture read without error has its shape
            shapes[int(position)] = result.shape
            kept += 1
    finally:
        for writer in writers:
            writer.close()
    return per_class, per_shard, shapes, skipped


def pack(
    cfg: DataConfig, output: str, shards: int | None = None, progress: Progress | None = None, seed: int = 0
) -> PackResult:
    """Write the source `cfg` names into records shards under `output`; index.json last."""
    if shards is not None and shards < 1:
        raise DataError(f"--shards must be at least 1, got {shards}")
    found = catalogue(cfg, seed)
    output = str(output).rstrip("/") if "://" in str(output) else str(Path(output).expanduser())
    with records.storage(output, "write the pack"):
        _check_output(output)
        return _pack(found, cfg, output, shards, counter(progress, sum(len(p) for p in found.splits.values())), seed)


def _pack(
    found: Catalogue, cfg: DataConfig, output: str, shards: int | None, step: Callable[[int], None] | None, seed: int
) -> PackResult:
    written: list[tuple[str, str]] = []  # (temporary, final), removed again unless the pack completes
    skipped: list[tuple[str, str]] = []
    entries: dict[str, dict] = {}
    shapes: dict[str, dict[int, tuple[int, int, int]]] = {}
    try:
        for split in records.SPLITS:
            pictures = found.splits[split]
            n = shard_count(shards, len(pictures), found.size_hint.get(split, 0))
            names = [records.shard_name(split, k, n) for k in range(n)]
            temps = [_temporary(records.join(output, name)) for name in names]
            written += [(t, records.join(output, name)) for t, name in zip(temps, names, strict=True)]
            per_class, per_shard, shapes[split], bad = _write_split(pictures, n, temps, len(found.class_names), step)
            skipped += bad
            entries[split] = {
                "count": int(per_class.sum()),
                "per_class": per_class.tolist(),
                "shards": names,
                "shard_counts": per_shard,
            }
        if skipped and cfg.on_corrupt == "error":
            name, why = sorted(skipped)[0]
            more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
            raise DataError(
                f"{name}: cannot read image ({why}){more}; replace or delete it, "
                "or pack with --set data.on_corrupt=skip to leave it out"
            )
        if not shapes["train"]:
            raise DataError(f"{found.source}: no readable training pictures to pack")
        index = {
            "format": records.FORMAT,
            "version": records.VERSION,
            "class_names": found.class_names,
            "splits": entries,
            **_shape_summary(shapes),
            "made": {
                "source": found.source,
                "dataset": found.dataset,
                "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "cnncli": __version__,
                "seed": seed,
                "shards": shards,
            },
        }
        _publish(written, output, index)
        written = []
    finally:
        for temp, _ in written:  # an error or an interrupt: no half-written shard is left behind
            if records.gfile().exists(temp):
                records.gfile().remove(temp)
    return PackResult(output, index, sorted(skipped), found.warnings)
