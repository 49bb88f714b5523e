"""`dataset: records`, `cnn data pack` and `cnn data inspect`.

A pack must give back exactly the arrays of what was packed (folder or array
source), be written all or nothing, and every way a records folder can be
damaged must end as one `Error:` line naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_data_api import write_folder
from test_images import jpeg_rotated, png_16bit, png_palette, png_rgba
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.config.schema import DataConfig
from cnncli.data import describe, load, records
from cnncli.errors import DataError

runner = CliRunner()


def cnn(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def mixed_folder(root: Path) -> Path:
    """Three classes of small pictures in every awkward format the reader handles."""
    write_folder(root, per_class=6, classes=("a", "b", "c"), suffixes=(".png", ".jpg", ".gif"), colour=True)
    jpeg_rotated(root / "a" / "rotated.jpg")
    png_16bit(root / "b" / "deep.png")
    png_palette(root / "c" / "palette.png")
    png_rgba(root / "c" / "rgba.png")
    return root


def folder_cfg(root, **extra) -> DataConfig:
    return DataConfig(dataset="image_folder", path=str(root), **extra)


def records_cfg(root, **extra) -> DataConfig:
    return DataConfig(dataset="records", path=str(root), **extra)


def assert_same_dataset(a, b):
    for split in ("train", "val", "test"):
        assert np.array_equal(getattr(a, f"x_{split}"), getattr(b, f"x_{split}")), split
        assert np.array_equal(getattr(a, f"y_{split}"), getattr(b, f"y_{split}")), split
    assert a.class_names == b.class_names


def one_error_line(result, *fragments):
    """One `Error:` line on stderr, after any progress lines (`packing: 8/10 pictures`, on stderr too)."""
    assert result.exit_code == 1, (result.stdout, result.stderr)
    stderr = "".join(line for line in result.stderr.splitlines(keepends=True)
                     if not re.fullmatch(r"(packing|reading): [\d,]+/[\d,]+ pictures\n", line))
    assert stderr.startswith("Error: ") and stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in stderr, result.stderr


# ---------------------------------------------------------------- pack then read

@pytest.mark.parametrize("conversion", [{}, {"image_size": (10, 12), "color_mode": "grayscale"}])
def test_packed_folder_decodes_to_exactly_the_folders_arrays(tmp_path, conversion):
    root = mixed_folder(tmp_path / "pictures")
    result = cnn("data", "pack", root, "--output", tmp_path / "packed", "--shards", 3)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == \
        f"packed 18 train + 4 test pictures of 3 classes into 3 + 3 shards: {tmp_path / 'packed'}"
    assert result.stderr.splitlines()[0] == "packing: 0/22 pictures"  # not a terminal: plain lines, on stderr
    assert len(result.stdout.splitlines()) == 1  # stdout: the result alone
    folder = load(folder_cfg(root, validation_split=0.25, **conversion), seed=5)
    packed = load(records_cfg(tmp_path / "packed", validation_split=0.25, **conversion), seed=5)
    assert_same_dataset(folder, packed)
    assert describe(records_cfg(tmp_path / "packed", **conversion)) == describe(folder_cfg(root, **conversion))
    assert sorted(p.name for p in (tmp_path / "packed").iterdir()) == [
        "index.json", *[f"test-0000{k}-of-00003.tfrecord" for k in range(3)],
        *[f"train-0000{k}-of-00003.tfrecord" for k in range(3)]]  # no temporary file is left


def test_index_json_says_what_was_packed(tmp_path):
    root = mixed_folder(tmp_path / "pictures")
    cnn("data", "pack", root, "--output", tmp_path / "packed", "--shards", 2)
    index = json.loads((tmp_path / "packed" / "index.json").read_text())
    assert (index["format"], index["version"], index["class_names"]) == ("cnncli-records", 1, ["a", "b", "c"])
    assert index["splits"]["train"] == {"count": 18, "per_class": [6, 6, 6],
                                        "shards": ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"],
                                        "shard_counts": [9, 9]}
    assert index["splits"]["test"]["per_class"] == [1, 1, 2]
    assert index["image_shape"] is None and index["first_size"] == [8, 6] and index["channels"] == 3
    made = index["made"]
    assert made["source"] == str(root) and made["dataset"] == "image_folder" and made["shards"] == 2
    assert made["cnncli"] and made["date"].endswith("+00:00")


def test_every_shard_holds_a_mix_of_classes(tmp_path):
    root = write_folder(tmp_path / "pictures", per_class=20, classes=("a", "b"))
    cnn("data", "pack", root, "--output", tmp_path / "packed", "--shards", 4)
    import tensorflow as tf

    for file in records.shard_files(tmp_path / "packed", "train"):
        labels = [int(label) for _, label in tf.data.TFRecordDataset(file).map(records.parse)]
        assert len(labels) == 8 and set(labels) == {0, 1}, file


def test_array_source_config_packs_as_png_and_reads_back_the_same(tmp_path):
    config = tmp_path / "shapes.yaml"
    config.write_text("seed: 2\ndata:\n  dataset: shapes\n"
                      "  shapes: {image_size: 16, train_examples: 40, test_examples: 12}\n"
                      "model:\n  layers: [{type: Flatten}, {type: Dense, units: 6, activation: softmax}]\n")
    result = cnn("data", "pack", config, "--output", tmp_path / "packed", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["index"]["image_shape"] == [16, 16, 1] and doc["index"]["made"]["dataset"] == "shapes"
    shapes = DataConfig(dataset="shapes", shapes={"image_size": 16, "train_examples": 40, "test_examples": 12})
    assert_same_dataset(load(shapes, seed=2), load(records_cfg(tmp_path / "packed"), seed=2))


def test_a_pack_can_be_packed_again_with_other_shards(tmp_path):
    root = write_folder(tmp_path / "pictures", per_class=6, classes=("a", "b"))
    cnn("data", "pack", root, "--output", tmp_path / "one", "--shards", 1)
    assert cnn("data", "pack", tmp_path / "one", "--output", tmp_path / "three", "--shards", 3).exit_code == 0
    assert_same_dataset(load(records_cfg(tmp_path / "one"), seed=0), load(records_cfg(tmp_path / "three"), seed=0))


# ---------------------------------------------------------------- pack errors

def test_a_corrupt_file_stops_the_pack_and_leaves_nothing(tmp_path):
    root = write_folder(tmp_path / "pictures", per_class=5, classes=("a", "b"))
    bad = root / "b" / "02.png"
    bad.write_bytes(bad.read_bytes()[:40])
    result = cnn("data", "pack", root, "--output", tmp_path / "packed")
    one_error_line(result, f"Error: {bad}: cannot read image (", "--set data.on_corrupt=skip")
    assert list((tmp_path / "packed").iterdir()) == []
    skipped = cnn("data", "pack", root, "--output", tmp_path / "packed", "--set", "data.on_corrupt=skip")
    assert skipped.exit_code == 0 and f"skipped {bad}: " in skipped.stderr
    assert json.loads((tmp_path / "packed" / "index.json").read_text())["splits"]["train"]["per_class"] == [4, 3]


@pytest.mark.parametrize("case", ["exists", "no-source", "bad-set", "file-output", "under-a-file"])
def test_pack_refuses_with_one_line(tmp_path, case):
    root = write_folder(tmp_path / "pictures", per_class=3, classes=("a", "b"))
    args = [root, "--output", tmp_path / "packed"]
    if case == "exists":
        cnn("data", "pack", *args)
        expected = [f"Error: {tmp_path / 'packed'}: already holds a pack (index.json); choose another --output"]
    elif case == "no-source":
        args[0] = tmp_path / "nowhere"
        expected = [f"Error: {tmp_path / 'nowhere'}: no such folder or config file"]
    elif case == "bad-set":
        args += ["--set", "data.on_corupt=skip"]
        expected = ["data.on_corupt", "did you mean `on_corrupt`"]
    elif case == "file-output":
        (tmp_path / "packed").write_text("a file")
        expected = [f"Error: {tmp_path / 'packed'}: is a file; --output must be a folder"]
    else:
        (tmp_path / "file").write_text("a file")
        args[2] = tmp_path / "file" / "packed"
        expected = [f"Error: {tmp_path / 'file' / 'packed'}: cannot write the pack ("]
    one_error_line(cnn("data", "pack", *args), *expected)


# ---------------------------------------------------------------- inspect

def test_inspect_a_folder_counts_sizes_modes_and_unreadable_files(tmp_path):
    root = mixed_folder(tmp_path / "pictures")
    bad = root / "a" / "03.png"
    bad.write_bytes(bad.read_bytes()[:40])
    result = cnn("data", "inspect", root, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == {"source", "dataset", "class_names", "splits", "sizes", "modes", "unreadable", "warnings"}
    train, test = report["splits"]["train"], report["splits"]["test"]
    assert {name: train["per_class"][name] + test["per_class"][name] for name in "abc"} == {"a": 6, "b": 7, "c": 8}
    assert train["count"] + test["count"] == 21
    assert report["sizes"]["min"] == [8, 6] and report["sizes"]["max"] == [20, 20]
    assert {"height": 20, "width": 12, "count": 1} in report["sizes"]["distinct"]  # the EXIF-rotated JPEG
    assert report["modes"] == {"I;16": 1, "P": 7, "RGB": 12, "RGBA": 1}
    assert len(report["unreadable"]) == 1 and report["unreadable"][0]["path"] == str(bad)
    assert report["unreadable"][0]["class"] == "a" and report["unreadable"][0]["reason"]


def test_inspect_a_pack_and_a_config_as_tables(tmp_path):
    root = write_folder(tmp_path / "pictures", per_class=5, classes=("a", "b"))
    cnn("data", "pack", root, "--output", tmp_path / "packed")
    result = cnn("data", "inspect", tmp_path / "packed")
    assert result.exit_code == 0, result.stderr
    assert "│ all   │     8 │    2 │" in result.stdout and "sizes (height×width): 8×6 (10)" in result.stdout
    assert "modes: L (10)" in result.stdout and "unreadable: none" in result.stdout
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{dataset: records, path: {tmp_path / 'packed'}}}\n"
                      "model: {layers: [{type: Flatten}, {type: Dense, units: 2}]}\n")
    doc = json.loads(cnn("data", "inspect", config, "--json").stdout)
    assert doc["dataset"] == "records" and doc["made"]["source"] == str(root)


# ---------------------------------------------------------------- damaged records folders

def _packed(tmp_path) -> Path:
    root = write_folder(tmp_path / "pictures", per_class=5, classes=("a", "b"))
    cnn("data", "pack", root, "--output", tmp_path / "packed", "--shards", 2)
    return tmp_path / "packed"


def test_missing_index_json(tmp_path):
    packed = _packed(tmp_path)
    (packed / "index.json").unlink()
    with pytest.raises(DataError, match=f"^{packed / 'index.json'}: not found; {packed} is not a complete records"):
        load(records_cfg(packed), seed=0)
    with pytest.raises(DataError, match=f"^{tmp_path / 'nope'}: no such folder"):
        describe(records_cfg(tmp_path / "nope"))


def test_index_json_that_is_not_ours(tmp_path):
    packed = _packed(tmp_path)
    (packed / "index.json").write_text("{not json")
    with pytest.raises(DataError, match=f"^{packed / 'index.json'}: not valid JSON"):
        load(records_cfg(packed), seed=0)
    (packed / "index.json").write_text('{"format": "cnncli-records", "version": 99}')
    with pytest.raises(DataError, match="format version 99 is newer than this cnncli reads"):
        describe(records_cfg(packed))


def test_a_listed_shard_that_is_missing(tmp_path):
    packed = _packed(tmp_path)
    (packed / "train-00001-of-00002.tfrecord").unlink()
    with pytest.raises(DataError, match=f"^{packed / 'train-00001-of-00002.tfrecord'}: shard listed in "):
        records.shard_files(packed, "train")
    config = tmp_path / "c.yaml"
    config.write_text(f"data: {{dataset: records, path: {packed}}}\ntrain: {{epochs: 1}}\n"
                      "model: {layers: [{type: Flatten}, {type: Dense, units: 2, activation: softmax}]}\n")
    result = cnn("train", config, "-o", tmp_path / "runs", "-q")
    one_error_line(result, f"Error: {packed / 'train-00001-of-00002.tfrecord'}: shard listed in")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_shard_names_the_file(tmp_path, damage):
    packed = _packed(tmp_path)
    shard = packed / "train-00000-of-00002.tfrecord"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2] if damage == "truncated" else b"\x00" * 64)
    with pytest.raises(DataError, match=f"^{shard}: damaged after record"):
        load(records_cfg(packed), seed=0)


def test_a_record_with_a_broken_picture_follows_on_corrupt(tmp_path):
    import tensorflow as tf

    packed = _packed(tmp_path)
    shard = packed / "test-00000-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(records.example(b"not a picture", 1, 0, "b/00.png"))
    with pytest.raises(DataError, match=f"^{shard}: b/00.png: cannot read image .*data.on_corrupt: skip"):
        load(records_cfg(packed), seed=0)
    ds = load(records_cfg(packed, on_corrupt="skip"), seed=0)
    assert len(ds.x_test) == 1 and ds.warnings == [f"skipped 1 unreadable image(s): {shard}: b/00.png"]


def test_a_record_that_is_not_a_picture_record(tmp_path):
    import tensorflow as tf

    packed = _packed(tmp_path)
    shard = packed / "test-00001-of-00002.tfrecord"
    with tf.io.TFRecordWriter(str(shard)) as writer:
        writer.write(tf.train.Example().SerializeToString())
    with pytest.raises(DataError, match=f"^{shard}: record 0: not a cnncli picture record"):
        load(records_cfg(packed), seed=0)


# ---------------------------------------------------------------- training

def shapes_folder(root: Path, train: int = 480, test: int = 120) -> Path:
    """The built-in shapes data written out as an image folder with train/ and test/."""
    ds = load(DataConfig(dataset="shapes", validation_split=0,
                         shapes={"image_size": 16, "train_examples": train, "test_examples": test,
                                 "classes": ["x", "o", "square"]}), seed=0)
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        for i, (pixels, label) in enumerate(zip(x, y, strict=True)):
            write = root / split / ds.class_names[label]
            write.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[..., 0]).save(write / f"{i:04d}.png")
    return root


TRAIN = """\
name: {name}
seed: 3
deterministic: true
data: {{dataset: {dataset}, path: {path}, validation_split: 0.1}}
model:
  layers:
    - {{type: Conv2D, filters: 8, kernel_size: 3, activation: relu}}
    - {{type: MaxPooling2D}}
    - {{type: Flatten}}
    - {{type: Dense, units: 3, activation: softmax}}
train: {{epochs: 3, batch_size: 32, optimizer: {{type: Adam, learning_rate: 0.01}}}}
runtime: {{device: cpu, precision: float32}}
"""


def test_training_on_a_pack_matches_training_on_its_folder(tmp_path):
    root = shapes_folder(tmp_path / "shapes")
    assert cnn("data", "pack", root, "--output", tmp_path / "packed", "--shards", 4).exit_code == 0
    accuracy, runs = {}, {}
    for dataset, path in (("image_folder", root), ("records", tmp_path / "packed")):
        config = tmp_path / f"{dataset}.yaml"
        config.write_text(TRAIN.format(name=dataset, dataset=dataset, path=path))
        result = cnn("train", config, "-o", tmp_path / "runs", "--json")
        assert result.exit_code == 0, result.stderr
        accuracy[dataset] = json.loads(result.stdout)["metrics"]["test"]["accuracy"]
        runs[dataset] = json.loads(result.stdout)["run_dir"]
    assert accuracy["records"] == pytest.approx(accuracy["image_folder"], abs=0.005)
    assert accuracy["records"] > 0.6  # it learned something: the comparison is not between two chance levels
    crossed = cnn("evaluate", runs["image_folder"], "--data", "data.dataset=records",
                  "--data", f"data.path={tmp_path / 'packed'}", "--json")
    assert crossed.exit_code == 0, crossed.stderr
    assert json.loads(crossed.stdout)["accuracy"] == pytest.approx(accuracy["image_folder"], abs=1e-9)


def test_a_url_path_goes_through_tf_io_gfile(tmp_path):
    """TensorFlow's in-memory file system stands in for gs:// and other object stores."""
    root = write_folder(tmp_path / "pictures", per_class=5, classes=("a", "b"))
    url = f"ram://{tmp_path.name}/packed"
    assert cnn("data", "pack", root, "--output", url, "--shards", 2).exit_code == 0
    assert_same_dataset(load(folder_cfg(root), seed=0), load(records_cfg(url), seed=0))
    report = json.loads(cnn("data", "inspect", url, "--json").stdout)
    assert report["dataset"] == "records" and report["splits"]["train"]["count"] == 8
