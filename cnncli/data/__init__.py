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

from cnncli.config import DataConfig
from cnncli.data import idx, image_folder, keras_datasets, npz, records, shapes
from cnncli.data.base import Dataset, DatasetInfo, Source
from cnncli.data.prepare import convert_images, converted_shape, prepare
from cnncli.errors import DataError
from cnncli.registry import Registry

__all__ = ["Dataset", "DatasetInfo", "convert_images", "describe", "list_datasets", "load", "SOURCES"]

SOURCES: Registry[Source] = Registry("dataset", {
    **shapes.SOURCES, **keras_datasets.SOURCES, **idx.SOURCES, **npz.SOURCES, **image_folder.SOURCES,
    **records.SOURCES,
})


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
