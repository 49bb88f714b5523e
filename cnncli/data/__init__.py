"""Datasets: from a `data:` config section to uint8 NHWC arrays in memory.

One module per source (shapes, keras_datasets, idx, npz, image_folder, records), each
contributing entries to `SOURCES`, the registry `data.dataset` is looked up
in. `prepare` applies what every source shares: limit, validation split,
colour mode and size.

    >>> ds = load(DataConfig(dataset="shapes"), seed=42)
    >>> ds.x_train.shape, ds.input_shape, ds.class_names[:2]
    ((5400, 32, 32, 1), (32, 32, 1), ['x', 'o'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cnncli.config.schema import DataConfig
from cnncli.data import idx, image_folder, keras_datasets, npz, pipeline, records, residency, shapes
from cnncli.data.base import Dataset, DatasetInfo, Source
from cnncli.data.prepare import convert_images, converted_shape, prepare, training_class_warnings
from cnncli.errors import DataError
from cnncli.registry import Registry

__all__ = [
    "Dataset",
    "DatasetInfo",
    "convert_images",
    "describe",
    "list_datasets",
    "load",
    "open_data",
    "cache_streams",
    "SOURCES",
]

SOURCES: Registry[Source] = Registry(
    "dataset",
    {
        **shapes.SOURCES,
        **keras_datasets.SOURCES,
        **idx.SOURCES,
        **npz.SOURCES,
        **image_folder.SOURCES,
        **records.SOURCES,
    },
)


def _source(cfg: DataConfig) -> Source:
    if cfg.dataset not in SOURCES:
        raise DataError(SOURCES.unknown_message(cfg.dataset))
    return SOURCES.get(cfg.dataset)


def list_datasets() -> list[str]:
    """The names `data.dataset` accepts."""
    return SOURCES.names()


def describe(cfg: DataConfig) -> DatasetInfo:
    """Input shape (after image_size and color_mode) and classes, without loading the data."""
    info = _source(cfg).describe(cfg)
    return DatasetInfo(converted_shape(info.input_shape, cfg), info.num_classes, list(info.class_names))


def load(cfg: DataConfig, seed: int) -> Dataset:
    """Every split in memory: uint8 0..255 NHWC pixels, int64 labels, validation carved from train."""
    return prepare(_source(cfg).load(cfg, seed), cfg, seed)


def open_data(
    cfg: DataConfig,
    seed: int,
    shape: Sequence[int] | None = None,
    worker: int = 0,
    workers: int = 1,
    load_resident: Callable[[DataConfig, int], Dataset] | None = None,
) -> Dataset:
    """Resident arrays, or streamed file splits, as data.cache (and for `auto`, the memory budget) decide.

    `shape` is the model's input (h, w, c) when it differs from the data's; under several workers
    each streams only its own share of the training files. Streamed splits read nothing yet:
    `cache_streams` writes or opens their disk cache. `load_resident` reads resident data in
    place of `load` (a sweep's, which reads the files once for all its trials).
    """
    load_resident = load_resident or load
    source = _source(cfg)
    if (source.files is None and cfg.dataset != "records") or cfg.cache == "memory":
        data = load_resident(cfg, seed)
        why = (
            "data.cache is set in the config"
            if cfg.cache == "memory"
            else f"dataset `{cfg.dataset}` is read into memory whole"
        )
        data.cache = {"mode": "memory", "why": why}
        return data
    splits: dict[str, Any]  # split -> a FileSplit or a RecordSplit, which Dataset holds in place of arrays
    if cfg.dataset == "records":
        from cnncli.data.record_stream import record_splits

        height, width, channels = (int(d) for d in (shape or describe(cfg).input_shape))
        image_shape = (height, width, channels)
        splits, class_names, where, warnings = (*record_splits(cfg, seed, image_shape), [])
    else:
        assert source.files is not None  # a source without files was read whole above
        listing: pipeline.FileListing = source.files(cfg)
        splits = pipeline.split_listing(listing, cfg, seed)
        class_names, where, warnings = listing.class_names, listing.source, listing.warnings
        # Before the workers take their shares: the split as configured (a pack's labels are known only when read).
        warnings = [
            *warnings,
            *training_class_warnings(
                splits["train"].labels, np.array([label for _, label in listing.files["train"]]), list(class_names), cfg
            ),
        ]
        height, width, channels = (int(d) for d in (shape or listing.image_shape))
        image_shape = (height, width, channels)
    splits = {name: split.with_shape(image_shape) for name, split in splits.items()}
    image_bytes = int(np.prod(image_shape))
    root = residency.cache_root(cfg.cache_dir)
    assert not isinstance(cfg.memory_budget, str)  # the schema's validator turned "4GB" into bytes
    mode, why = residency.choose_cache(
        cfg.cache,
        cfg.memory_budget,
        len(splits["train"]) * image_bytes,
        sum(len(s) for s in splits.values()) * image_bytes,
        root,
    )
    if mode == "memory":
        data = load_resident(cfg, seed)
        data.cache = {"mode": "memory", "why": why}
        return data
    if mode == "disk" and cfg.dataset == "records":
        mode, why = "none", why + "; a pack streams its shards as they are (no disk cache of decoded pictures)"
    if workers > 1:
        if len(splits["train"]) < workers:
            raise DataError(
                f"{where}: {len(splits['train'])} training file(s) cannot be shared by "
                f"{workers} workers; use fewer workers or more data"
            )
        splits["train"] = splits["train"].shard(worker, workers)
    for split in splits.values():
        split.cache, split.cache_root = mode, root
    data = Dataset(
        splits["train"],
        splits["train"].labels,
        splits["val"],
        splits["val"].labels,
        splits["test"],
        splits["test"].labels,
        class_names=list(class_names),
        source=where,
        warnings=list(warnings),
    )
    data.cache = {"mode": mode, "why": why}
    return data


def cache_streams(data: Dataset, progress: Callable[[str, int, int, float], None] | None = None) -> None:
    """Open (writing if needed) the disk cache of every streamed split with `cache: disk`.

    `progress(split, done, total, seconds)` is called during a first pass.
    """
    for split in ("train", "val", "test"):
        x = getattr(data, f"x_{split}")
        if isinstance(x, pipeline.FileSplit) and x.cache == "disk" and len(x):
            report = (lambda d, t, s, name=split: progress(name, d, t, s)) if progress else None
            assert data.cache is not None  # open_data records how every streamed dataset is cached
            data.cache.setdefault("folders", {})[split] = x.open_cache(report)
