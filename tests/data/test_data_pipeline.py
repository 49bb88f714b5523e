"""The streamed split types on their own: budget parsing, the cache choice, shares, the fewer-shards error."""

from __future__ import annotations

import numpy as np
import pytest

from cnncli.config.schema import DataConfig
from cnncli.data.pipeline import FileSplit
from cnncli.data.record_stream import RecordSplit
from cnncli.data.residency import choose_cache
from cnncli.errors import DataError


@pytest.mark.parametrize("text, expected", [("512MB", 512 << 20), ("4GB", 4 << 30), ("1.5G", int(1.5 * (1 << 30))),
                                            (1000, 1000)])
def test_memory_budget_sizes(text, expected):
    assert DataConfig(memory_budget=text).memory_budget == expected


def test_a_memory_budget_that_is_not_a_size_is_a_config_error():
    with pytest.raises(ValueError, match="expected bytes or a size such as 512MB or 4GB, got `lots`"):
        DataConfig(memory_budget="lots")


def test_auto_keeps_data_resident_while_it_fits(tmp_path):
    mode, why = choose_cache("auto", 2 << 20, 1 << 20, 3 << 20, tmp_path)
    assert mode == "memory"
    assert why == "decoded training split 1.0 MB fits the memory budget 2.0 MB (data.memory_budget)"
    mode, why = choose_cache("auto", 1 << 20, 2 << 20, 3 << 20, tmp_path)
    assert mode == "disk" and why.startswith("decoded training split 2.0 MB exceeds the memory budget 1.0 MB")
    assert choose_cache("none", None, 1, 1, tmp_path) == ("none", "data.cache is set in the config")


def test_auto_decodes_every_epoch_when_the_cache_folder_has_no_room(tmp_path):
    mode, why = choose_cache("auto", 1, 2, 1 << 60, tmp_path)
    assert mode == "none" and "free for a cache; decoding every epoch" in why


def test_worker_shares_are_disjoint_and_cover_every_file():
    split = FileSplit([f"f{i}" for i in range(11)], np.arange(11), (4, 4, 1), read=None)
    shares = [split.shard(w, 3) for w in range(3)]
    assert [s.files for s in shares] == [["f0", "f3", "f6", "f9"], ["f1", "f4", "f7", "f10"], ["f2", "f5", "f8"]]
    assert {s.share_sizes for s in shares} == {(4, 4, 3)}


def test_fewer_shards_than_workers_is_an_error_naming_the_fix():
    split = RecordSplit(["/p/train-00000-of-00001.tfrecord"], [10], np.arange(10), 10, np.zeros(10, np.int64),
                        (8, 8, 1), read=None)
    with pytest.raises(DataError, match=r"^/p: 1 training shard\(s\) cannot be shared by 2 workers \(each reads "
                                        r"whole shards\); re-pack with cnn data pack \.\.\. --shards 2"):
        split.shard(0, 2)
