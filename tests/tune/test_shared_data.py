"""A sweep's trials share one read of their resident data, handed to each job explicitly."""

from __future__ import annotations

import cnncli.data
from cnncli.config.schema import DataConfig, ShapesSpec
from cnncli.tune.sweep import SharedData

SMALL = DataConfig(dataset="shapes", validation_split=0,
                   shapes=ShapesSpec(image_size=8, classes=["x", "o"], train_examples=20, test_examples=4))


def test_the_loader_reads_once_per_config_and_hands_each_trial_its_own_copy(monkeypatch):
    reads = []
    real = cnncli.data.load
    monkeypatch.setattr(cnncli.data, "load", lambda cfg, seed: reads.append(seed) or real(cfg, seed))
    shared = SharedData()
    first, second = shared(SMALL, 3), shared(SMALL, 3)
    assert reads == [3]
    assert first is not second and first.x_train is second.x_train  # a shallow copy: arrays are not copied
    first.x_train = first.x_train[:1]  # a job replacing an array leaves the next trial's data whole
    assert len(shared(SMALL, 3).x_train) == 20
    shared(SMALL, 4)
    assert reads == [3, 4]


def test_open_data_reads_resident_data_through_the_loader_it_is_given():
    calls = []

    def loader(cfg, seed):
        calls.append(seed)
        return cnncli.data.load(cfg, seed)

    data = cnncli.data.open_data(SMALL, 5, load_resident=loader)
    assert calls == [5] and data.cache["mode"] == "memory" and len(data.x_train) == 20
