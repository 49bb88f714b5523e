"""Streamed data under MultiWorkerMirroredStrategy: each worker reads only its own share of the files.

Two workers on 127.0.0.1 (see tests/train/test_distributed.py for how they start)
train on an image folder with `data.cache: none`. Worker w reads training
files w, w+2, w+4, ... only (its run.json counts the files it opened), every
global batch is whole, and both end with identical weights. MirroredStrategy
over two logical CPU devices streams the same folder in one process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import write_shapes_folder
from test_distributed import assert_same_weights, multi_worker

CONFIG = """\
name: shards
seed: 5
data:
  dataset: image_folder
  path: {folder}
  validation_split: 0.1
  cache: none
model:
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}}
    - {{type: MaxPooling2D, pool_size: 2}}
    - {{type: Flatten}}
    - {{type: Dense, units: 3, activation: softmax}}
train:
  epochs: 2
  batch_size: 32
  optimizer: {{type: Adam, learning_rate: 0.01}}
runtime:
  precision: float32
"""


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream-shards")
    write_shapes_folder(root / "folder", seed=5, train=300, test=60)
    (root / "shards.yaml").write_text(CONFIG.format(folder=root / "folder"))
    return root


@pytest.mark.slow  # two TensorFlow processes and a cluster: about a minute on 2 cores
def test_two_workers_each_stream_only_their_half_and_end_identical(work):
    results = multi_worker(["train", str(work / "shards.yaml")], work / "mw", work / "mw-workers")
    for index, r in enumerate(results):
        assert r.returncode == 0, f"worker {index} exit {r.returncode}:\n{r.stderr[-3000:]}"
        assert "unshardable" not in r.stderr.lower() and "AUTO" not in r.stderr
    dirs = [Path(json.loads(r.stdout)["run_dir"]) for r in results]
    runs = [json.loads((d / "run.json").read_text()) for d in dirs]
    assert [run["data"]["cache"]["mode"] for run in runs] == ["none", "none"]
    files = sum(1 for _ in (work / "folder" / "train").rglob("*.png"))
    shares = [run["data"]["train"] for run in runs]
    assert sum(shares) == files - round(0.1 * files) and abs(shares[0] - shares[1]) <= 1  # validation is not shared
    # each opened files of its own half only; an epoch's whole batches
    for run, share in zip(runs, shares, strict=True):
        assert 8 * 16 <= run["data"]["files_opened"] <= share  # (8 steps of 16 per worker) may leave a few unread
    assert_same_weights(dirs[0] / "model.keras", dirs[1] / "model.keras")
    history = np.genfromtxt(dirs[0] / "history.csv", delimiter=",", names=True)
    assert history["accuracy"][-1] > 0.5  # it learned: chance is 1/3


@pytest.mark.slow  # packing, then two TensorFlow processes and a cluster
def test_two_workers_on_a_4_shard_pack_each_open_2_shards_and_end_identical(work):
    import subprocess
    import sys

    pack = work / "pack"
    done = subprocess.run([sys.executable, "-m", "cnncli", "data", "pack", str(work / "folder"), "--output", str(pack),
                           "--shards", "4"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    config = work / "records.yaml"
    config.write_text(CONFIG.format(folder=pack).replace("dataset: image_folder", "dataset: records"))
    results = multi_worker(["train", str(config)], work / "mw-records", work / "mw-records-workers")
    for index, r in enumerate(results):
        assert r.returncode == 0, f"worker {index} exit {r.returncode}:\n{r.stderr[-3000:]}"
        assert "unshardable" not in r.stderr.lower()
    dirs = [Path(json.loads(r.stdout)["run_dir"]) for r in results]
    runs = [json.loads((d / "run.json").read_text()) for d in dirs]
    assert [run["data"]["files_opened"] for run in runs] == [2, 2]  # shards 0, 2 and 1, 3 of 4
    assert_same_weights(dirs[0] / "model.keras", dirs[1] / "model.keras")


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_mirrored_over_two_devices_streams_whole_global_batches_and_learns_as_one_device(work):
    from test_distributed import train_json

    config = work / "shards.yaml"
    one = train_json(config, work / "one")
    two = train_json(config, work / "two", "runtime.distribute=mirrored", "runtime.cpu_devices=2")
    assert two["runtime"]["strategy"] == "MirroredStrategy" and two["runtime"]["replicas"] == 2
    runs = [json.loads((Path(r["run_dir"]) / "run.json").read_text()) for r in (one, two)]
    assert [run["data"]["cache"]["mode"] for run in runs] == ["none", "none"]
    assert runs[0]["data"]["train"] == runs[1]["data"]["train"]  # one process reads every training file
    steps = runs[1]["data"]["train"] // 32  # whole global batches of 32, 16 on each device
    for run in runs:  # the files it opened (each counted once): those of every whole batch
        assert steps * 32 <= run["data"]["files_opened"] <= run["data"]["train"]
    histories = [np.genfromtxt(Path(r["run_dir"]) / "history.csv", delimiter=",", names=True) for r in (one, two)]
    assert len(histories[1]) == 2 and histories[1]["accuracy"][-1] > 0.5  # it learned: chance is 1/3
    assert abs(one["metrics"]["test"]["accuracy"] - two["metrics"]["test"]["accuracy"]) <= 0.1
