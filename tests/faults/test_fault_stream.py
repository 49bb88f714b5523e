"""Streamed training (data.cache: disk | none | auto) as real `cnn` processes: kills, resume, bad files.

The data is the tiny shapes config written as an image folder of PNGs, so a
streamed run reads, decodes and (with `disk`) caches real files. A streamed
split yields the same batches in the same (seed, epoch) order as resident
arrays, so a deterministic streamed run and its resumed twin must end with the
same history and weights, and `auto` below its memory budget trains exactly
as the resident run does.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import EPOCHS
from harness import check_complete, history_rows, only_run_dir
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for helpers

from helpers import write_shapes_folder  # noqa: E402

STREAMED = """\
name: streamed
seed: 7
deterministic: true
data:
  dataset: image_folder
  path: {folder}
  validation_split: 0.1
  cache: {cache}
  cache_dir: {cache_dir}
  on_corrupt: {on_corrupt}
{extra}model:
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, padding: same, activation: relu}}
    - {{type: MaxPooling2D, pool_size: 2}}
    - {{type: Flatten}}
    - {{type: Dense, units: 3, activation: softmax}}
train:
  epochs: {epochs}
  batch_size: 32
  optimizer: {{type: Adam, learning_rate: 0.01}}
runtime:
  precision: float32
"""


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """400 training and 90 test shapes as PNG files, one folder per class."""
    return write_shapes_folder(tmp_path_factory.mktemp("shapes-folder"), seed=7, train=400, test=90)


def config(where: Path, folder: Path, cache: str = "disk", on_corrupt: str = "error", epochs: int = EPOCHS,
           extra: str = "", name: str = "streamed.yaml") -> Path:
    path = where / name
    path.write_text(STREAMED.format(folder=folder, cache=cache, cache_dir=where / "cache", on_corrupt=on_corrupt,
                                    epochs=epochs, extra=extra))
    return path


def run_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def weights(run_dir: Path) -> list[np.ndarray]:
    import keras

    import cnncli.model.preprocessing  # noqa: F401

    return keras.models.load_model(run_dir / "model.keras", compile=False).get_weights()


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
@pytest.mark.parametrize("cache", ["none", "disk"])
def test_kill_in_epoch_2_of_a_streamed_run_then_resume_equals_an_uninterrupted_run(cnn, tmp_path, folder, cache):
    cfg = config(tmp_path, folder, cache=cache)
    whole = cnn("train", cfg, "-o", "whole", "-q", cwd=tmp_path)
    assert whole.code == 0, whole
    killed = cnn("train", cfg, "-o", "runs", "-q", cwd=tmp_path, fault="epoch_trained@2")
    assert killed.code == -signal.SIGKILL, killed
    run_dir = only_run_dir(tmp_path / "runs")
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed
    check_complete(run_dir, EPOCHS)
    reference = only_run_dir(tmp_path / "whole")
    assert history_rows(run_dir) == history_rows(reference)
    for ours, theirs in zip(weights(run_dir), weights(reference), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    data = run_json(run_dir)["data"]
    assert data["cache"]["mode"] == cache
    assert data["train"] == 360 and data["skipped"] == []


def test_auto_below_the_memory_budget_streams_and_trains_like_the_resident_run(cnn, tmp_path, folder):
    streamed = cnn("train", config(tmp_path, folder, cache="auto", extra="  memory_budget: 10000\n"),
                   "-o", "auto", cwd=tmp_path)
    assert streamed.code == 0, streamed
    assert "data streamed from the files through a disk cache: decoded training split 90.0 KB exceeds the " \
           "memory budget 9.8 KB (data.memory_budget)" in streamed.stdout
    resident = cnn("train", config(tmp_path, folder, cache="memory", name="resident.yaml"), "-o", "memory", "-q",
                   cwd=tmp_path)
    assert resident.code == 0, resident
    auto_dir, memory_dir = only_run_dir(tmp_path / "auto"), only_run_dir(tmp_path / "memory")
    assert run_json(auto_dir)["data"]["cache"]["mode"] == "disk"
    assert run_json(memory_dir)["data"]["cache"]["mode"] == "memory"
    accuracy = [json.loads((d / "metrics.json").read_text())["test"]["accuracy"] for d in (auto_dir, memory_dir)]
    assert accuracy[1] > 0.6  # the resident run learns the shapes
    assert abs(accuracy[0] - accuracy[1]) <= 0.02, accuracy


@pytest.fixture
def broken_folder(tmp_path, folder) -> tuple[Path, Path]:
    """A copy of the folder with one training JPEG cut off half-way."""
    import shutil

    copy = tmp_path / "folder"
    shutil.copytree(folder, copy)
    bad = copy / "train" / "o" / "zz-truncated.jpg"
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(bad, quality=95)
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    return copy, bad


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_a_truncated_jpeg_while_streaming_is_one_error_line_naming_it(cnn, tmp_path, broken_folder, cache):
    copy, bad = broken_folder
    done = cnn("train", config(tmp_path, copy, cache=cache, epochs=1), "-o", "runs", "-q", cwd=tmp_path)
    assert done.code == 1, done
    assert done.stderr.startswith(f"Error: while streaming: {bad}: cannot read image ("), done.stderr
    assert done.stderr.rstrip().endswith("replace or delete it, or set data.on_corrupt: skip")
    assert "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1


@pytest.mark.parametrize("cache", ["none", "disk"])
def test_a_truncated_jpeg_is_skipped_and_listed_on_request(cnn, tmp_path, broken_folder, cache):
    copy, bad = broken_folder
    done = cnn("train", config(tmp_path, copy, cache=cache, on_corrupt="skip", epochs=1), "-o", "runs", "-q",
               cwd=tmp_path)
    assert done.code == 0, done
    data = run_json(only_run_dir(tmp_path / "runs"))["data"]
    assert data["skipped"] == [str(bad)]


def test_a_vanished_file_is_skipped_like_a_corrupt_one(cnn, tmp_path, folder):
    import shutil

    copy = tmp_path / "folder"
    shutil.copytree(folder, copy)
    gone = copy / "train" / "x" / "0000.png"
    if not gone.exists():
        gone = next((copy / "train" / "x").iterdir())
    # Killed after the run read its file list but before it opened any image: then the file vanishes.
    child = cnn.start("train", config(tmp_path, copy, cache="none", on_corrupt="skip", epochs=1), "-o", "runs",
                      "-q", cwd=tmp_path, fault="config_written:stop")
    child.wait_until_stopped()
    gone.unlink()
    child.signal(signal.SIGCONT)
    done = child.wait()
    assert done.code == 0, done
    assert run_json(only_run_dir(tmp_path / "runs"))["data"]["skipped"] == [str(gone)]


def test_a_cache_whose_writer_was_killed_is_rebuilt(cnn, tmp_path, folder):
    cfg = config(tmp_path, folder, cache="disk", epochs=1)
    killed = cnn("train", cfg, "-o", "killed", "-q", cwd=tmp_path, fault="cache_written")
    assert killed.code == -signal.SIGKILL, killed
    half = [p for p in (tmp_path / "cache").iterdir() if not (p / "done.json").exists()]
    assert len(half) == 1 and (half[0] / "images.npy").exists()  # the images, but no commit marker
    done = cnn("train", cfg, "-o", "runs", "-q", cwd=tmp_path)
    assert done.code == 0, done
    folders = run_json(only_run_dir(tmp_path / "runs"))["data"]["cache"]["folders"]
    assert folders["train"] == {"folder": str(half[0]), "built": True, "bytes": 360 * 16 * 16}
    assert (half[0] / "done.json").exists()
    again = cnn("train", cfg, "-o", "again", "-q", cwd=tmp_path)
    assert again.code == 0, again
    assert run_json(only_run_dir(tmp_path / "again"))["data"]["cache"]["folders"]["train"]["built"] is False
