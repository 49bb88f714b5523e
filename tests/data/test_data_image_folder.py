"""`image_folder`: layouts, formats, colour and size decisions, and every way a folder can be wrong."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from test_data_api import write_folder, write_image

from cnncli.config.schema import DataConfig
from cnncli.data import describe, load
from cnncli.errors import DataError
from cnncli.images import read_image


def _cfg(root, **extra) -> DataConfig:
    return DataConfig(dataset="image_folder", path=str(root), **{"validation_split": 0, **extra})


def test_flat_folder_with_every_format(tmp_path):
    root = write_folder(tmp_path / "d", per_class=10, classes=("dog", "cat", "bird"),
                        suffixes=(".png", ".jpg", ".jpeg", ".bmp", ".GIF"))
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")
    ds = load(_cfg(root), seed=0)
    assert ds.class_names == ["bird", "cat", "dog"]  # sorted folder names
    assert ds.x_train.shape == (24, 8, 6, 1) and ds.x_test.shape == (6, 8, 6, 1)  # 20% of each class held out
    assert list(np.bincount(ds.y_train)) == [8, 8, 8] and list(np.bincount(ds.y_test)) == [2, 2, 2]
    assert ds.warnings == [] and ds.source == str(root)
    png = np.asarray(Image.open(root / "bird" / "00.png"))
    assert any(np.array_equal(x[..., 0], png) for x in np.concatenate([ds.x_train, ds.x_test]))


def test_held_out_files_do_not_depend_on_the_seed_or_new_files(tmp_path):
    root = write_folder(tmp_path / "d", per_class=10)
    first = load(_cfg(root), seed=0).x_test
    assert np.array_equal(first, load(_cfg(root), seed=99).x_test)
    write_image(root / "cat" / "zz-new.png", seed=555)
    again = load(_cfg(root), seed=0)
    assert len(again.x_test) == 4 and sum(any(np.array_equal(a, b) for b in again.x_test) for a in first) >= 3


def test_train_and_test_folders(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=4, classes=("a", "b"))
    write_folder(tmp_path / "d" / "test", per_class=2, classes=("a", "b"))
    ds = load(_cfg(tmp_path / "d", validation_split=0.25), seed=0)
    assert (len(ds.x_train), len(ds.x_val), len(ds.x_test)) == (6, 2, 4)
    assert ds.class_names == ["a", "b"] and list(ds.y_test) == [0, 0, 1, 1]


def test_train_folder_alone_is_carved_and_loose_images_noted(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=5, classes=("a", "b"))
    write_image(tmp_path / "d" / "train" / "stray.png")
    ds = load(_cfg(tmp_path / "d"), seed=0)
    assert (len(ds.x_train), len(ds.x_test)) == (8, 2)
    assert ds.warnings == [f"ignored 1 image(s) outside any class folder: {tmp_path / 'd' / 'train' / 'stray.png'}"]


def test_test_folder_with_an_unknown_class(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=2, classes=("a", "b"))
    write_folder(tmp_path / "d" / "test", per_class=1, classes=("a", "c"))
    with pytest.raises(DataError, match="class folder\\(s\\) c are not in"):
        load(_cfg(tmp_path / "d"), seed=0)


def test_colour_wins_when_any_image_is_colour(tmp_path):
    root = write_folder(tmp_path / "d", per_class=5)
    write_image(root / "dog" / "colour.png", colour=True)
    ds = load(_cfg(root), seed=0)
    assert ds.input_shape == (8, 6, 3) and describe(_cfg(root)).input_shape == (8, 6, 3)
    grey = load(_cfg(root, color_mode="grayscale"), seed=0)
    assert grey.input_shape == (8, 6, 1)


def test_grey_palette_gif_counts_as_grey(tmp_path):
    root = write_folder(tmp_path / "d", per_class=3, suffixes=(".gif",))
    with Image.open(next((root / "cat").iterdir())) as image:
        assert image.mode in ("P", "L")
    assert load(_cfg(root), seed=0).input_shape == (8, 6, 1)


def test_sizes_follow_the_first_image_or_image_size(tmp_path):
    root = write_folder(tmp_path / "d", per_class=4, size=(8, 6))
    write_image(root / "dog" / "big.png", size=(16, 12), value=77)
    ds = load(_cfg(root), seed=0)
    assert ds.input_shape == (8, 6, 1)
    assert ds.warnings == ["1 image(s) were not 8x6 (the first image's size) and were resized; "
                           "set data.image_size to choose the size"]
    assert any((x == 77).all() for x in np.concatenate([ds.x_train, ds.x_test]))
    sized = load(_cfg(root, image_size=(10, 10), color_mode="rgb"), seed=0)
    assert sized.input_shape == (10, 10, 3) and sized.warnings == []
    assert describe(_cfg(root, image_size=(10, 10), color_mode="rgb")).input_shape == (10, 10, 3)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_is_an_error_naming_it(tmp_path, damage):
    root = write_folder(tmp_path / "d", per_class=5)
    bad = root / "dog" / "02.png"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"this is not a png", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    with pytest.raises(DataError, match=f"{bad}: cannot read image .*set data.on_corrupt: skip"):
        load(_cfg(root), seed=0)


def test_corrupt_images_skipped_on_request(tmp_path):
    root = write_folder(tmp_path / "d", per_class=5)
    for name in ("01.png", "03.png"):
        (root / "cat" / name).write_bytes(b"junk")
    ds = load(_cfg(root, on_corrupt="skip"), seed=0)
    assert len(ds.x_train) + len(ds.x_test) == 8
    assert ds.warnings == [f"skipped 2 unreadable image(s): {root / 'cat' / '01.png'}, {root / 'cat' / '03.png'}"]


def test_a_class_left_without_readable_images(tmp_path):
    root = write_folder(tmp_path / "d", per_class=1)
    (root / "cat" / "00.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="class\\(es\\) cat have no readable training images left"):
        load(_cfg(root, on_corrupt="skip"), seed=0)


def test_one_class_is_not_enough(tmp_path):
    root = write_folder(tmp_path / "d", per_class=3, classes=("only",))
    with pytest.raises(DataError, match="a classifier needs at least 2 class folders, found only `only`"):
        load(_cfg(root), seed=0)
    with pytest.raises(DataError, match="found none"):
        describe(_cfg(tmp_path / "d" / "only"))


def test_empty_class_is_named(tmp_path):
    root = write_folder(tmp_path / "d", per_class=3)
    (root / "fish").mkdir()
    (root / "fish" / "readme.txt").write_text("no pictures yet")
    with pytest.raises(DataError, match="class folder `fish` has no images \\(.jpg, .jpeg, .png, .bmp, .gif\\)"):
        load(_cfg(root), seed=0)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder; data.path must be a folder with one sub-folder"):
        load(_cfg(tmp_path / "nowhere"), seed=0)


def test_links_leaving_the_folder_are_skipped_unless_allowed(tmp_path):
    root = write_folder(tmp_path / "d", per_class=5)
    outside = write_image(tmp_path / "secret" / "x.png", value=9)
    os.symlink(outside, root / "cat" / "link.png")
    os.symlink(tmp_path / "secret", root / "dog" / "linked-dir")
    os.symlink(root / "cat" / "00.png", root / "dog" / "inside.png")  # stays inside: followed
    ds = load(_cfg(root), seed=0)
    assert len(ds.x_train) + len(ds.x_test) == 11
    assert ds.warnings == [f"skipped 2 link(s) leading outside {root}: {root / 'cat' / 'link.png'}, "
                           f"{root / 'dog' / 'linked-dir'}; set data.follow_symlinks: true to follow them"]
    followed = load(_cfg(root, follow_symlinks=True), seed=0)
    assert len(followed.x_train) + len(followed.x_test) == 13 and followed.warnings == []


def test_read_image_for_predict(tmp_path):
    path = write_image(tmp_path / "x.png", size=(5, 7), colour=True)
    assert read_image(path).shape == (5, 7, 3) and read_image(path, "grayscale").shape == (5, 7, 1)
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg: cannot read image"):
        read_image(tmp_path / "bad.jpg")
