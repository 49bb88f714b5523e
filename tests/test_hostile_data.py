"""Bad data through `cnn train`: one "Error:" line naming the file and what is wrong, exit 1, no run directory.

Image folders (truncated, empty, fake and bomb images, one class, an empty
class), .npz archives (x/y lengths, NaN pixels, labels the model cannot output,
pickles) and IDX files (magic numbers, truncation). With `data.on_corrupt: skip`
a bad image among good ones is a warning that lists it and the count, and the
run completes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()

HEAD = """\
name: bad-data
seed: 1
data:
  dataset: {dataset}
  path: {path}
  validation_split: 0
{extra}model:
  layers:
    - {{type: Flatten}}
    - {{type: Dense, units: {units}, activation: softmax}}
train: {{epochs: 1, batch_size: 8}}
runtime: {{precision: float32}}
"""


def config(tmp_path: Path, dataset: str, path: Path, units: int = 2, extra: str = "") -> Path:
    file = tmp_path / "config.yaml"
    file.write_text(HEAD.format(dataset=dataset, path=path, units=units, extra=extra))
    return file


def train(tmp_path: Path, cfg: Path):
    result = runner.invoke(app, ["train", str(cfg), "-o", str(tmp_path / "runs"), "-q"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def assert_error(tmp_path: Path, result, expected: str) -> None:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr, result.stderr
    assert not list((tmp_path / "runs").glob("*/*"))  # no run directory is left for a run that never started


# ---------------------------------------------------------------- image folders

def png(path: Path, value: int = 128, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            png(root / name / f"{i}.png", value=40 * i)
    return root


def truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def bomb(path: Path, side: int = 15_000) -> Path:
    """A tiny PNG whose header claims side × side pixels: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    path.write_bytes(data + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))
    return path


def test_truncated_image(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3, "dog": 3})
    bad = truncate(root / "dog" / "1.png")
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", root)),
                 f"Error: {bad}: cannot read image (")
    assert "replace or delete it, or set data.on_corrupt: skip" in train(
        tmp_path, config(tmp_path, "image_folder", root)).stderr


def test_empty_image_file(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3, "dog": 3})
    (root / "cat" / "empty.png").write_bytes(b"")
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", root)),
                 f"Error: {root / 'cat' / 'empty.png'}: cannot read image (")


def test_text_file_with_an_image_name(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3, "dog": 3})
    (root / "dog" / "notes.jpg").write_text("not a picture\n")
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", root)),
                 f"Error: {root / 'dog' / 'notes.jpg'}: cannot read image (cannot identify image file")


def test_several_corrupt_images_are_all_named(tmp_path):
    root = folder(tmp_path / "images", {"cat": 4, "dog": 4})
    for i in range(3):
        truncate(root / "cat" / f"{i}.png")
    result = train(tmp_path, config(tmp_path, "image_folder", root))
    assert_error(tmp_path, result, f"Error: {root / 'cat' / '0.png'}: cannot read image (")
    assert f"(and 2 more: {root / 'cat' / '1.png'}, {root / 'cat' / '2.png'})" in result.stderr


def test_decompression_bomb(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3, "dog": 3})
    bomb(root / "dog" / "huge.png")
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", root)),
                 f"Error: {root / 'dog' / 'huge.png'}: cannot read image (Image size (225000000 pixels) exceeds limit")


def test_a_folder_with_one_class(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3})
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", root)),
                 f"Error: {root}: a classifier needs at least 2 class folders, found only `cat`; "
                 "put each class's images in its own sub-folder")


def test_a_class_with_no_images(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3, "dog": 0})
    (root / "dog" / "readme.txt").write_text("pictures to come")
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", root)),
                 f"Error: {root}: class folder `dog` has no images (.jpg, .jpeg, .png, .bmp, .gif); "
                 "add images or remove the folder")


def test_a_class_left_empty_by_skipping(tmp_path):
    root = folder(tmp_path / "images", {"cat": 3, "dog": 2})
    for path in (root / "dog").iterdir():
        truncate(path)
    result = train(tmp_path, config(tmp_path, "image_folder", root, extra="  on_corrupt: skip\n"))
    assert_error(tmp_path, result, f"Error: {root}: class(es) dog have no readable training images left")


def test_test_folder_with_an_unknown_class(tmp_path):
    folder(tmp_path / "images" / "train", {"cat": 3, "dog": 3})
    folder(tmp_path / "images" / "test", {"cat": 1, "cow": 1})
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", tmp_path / "images")),
                 f"Error: {tmp_path / 'images' / 'test'}: class folder(s) cow are not in "
                 f"{tmp_path / 'images' / 'train'}; the test classes must be training classes")


def test_missing_folder(tmp_path):
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "image_folder", tmp_path / "nowhere")),
                 f"Error: {tmp_path / 'nowhere'}: no such folder")


def test_a_corrupt_image_among_many_is_skipped_with_a_warning(tmp_path):
    root = folder(tmp_path / "images", {"cat": 6, "dog": 6})
    bad = truncate(root / "cat" / "3.png")
    result = train(tmp_path, config(tmp_path, "image_folder", root, extra="  on_corrupt: skip\n"))
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert f"warning: skipped 1 unreadable image(s): {bad}\n" in result.stderr  # shown even with --quiet
    run_dir = Path(result.stdout.strip())
    assert (run_dir / "model.keras").exists()


# ---------------------------------------------------------------- npz archives

def npz(tmp_path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    full = {"x_train": rng.integers(0, 256, (10, 6, 6), np.uint8), "y_train": np.arange(10) % 2,
            "x_test": rng.integers(0, 256, (4, 6, 6), np.uint8), "y_test": np.arange(4) % 2}
    full.update(arrays)
    path = tmp_path / "data.npz"
    np.savez(path, **{k: v for k, v in full.items() if v is not None})
    return path


NPZ_CASES = {
    "x-y-lengths-differ": (dict(y_train=np.arange(9) % 2), "x_train has 10 images but y_train has 9 labels; "
                                                           "they must match one to one"),
    "nan-pixels": (dict(x_train=np.where(np.eye(6, dtype=bool), np.nan, 0.5)[None].repeat(10, 0)),
                   "x_train: 60 pixels are NaN or infinite; fix or drop those images"),
    "infinite-pixels": (dict(x_test=np.full((4, 6, 6), np.inf)), "x_test: 144 pixels are NaN or infinite"),
    "pixels-out-of-range": (dict(x_train=np.full((10, 6, 6), 300, np.int32)),
                            "x_train: integer pixels must lie in 0..255, found 300..300"),
    "images-without-height": (dict(x_train=np.zeros((10, 36), np.uint8)),
                              "x_train: expected images shaped (N, H, W) or (N, H, W, C) with C 1 or 3, got (10, 36)"),
    "four-channels": (dict(x_train=np.zeros((10, 6, 6, 4), np.uint8)), "with C 1 or 3, got (10, 6, 6, 4)"),
    "splits-of-different-sizes": (dict(x_test=np.zeros((4, 5, 5), np.uint8)),
                                  "x_train images are (6, 6, 1) but x_test images are (5, 5, 1)"),
    "negative-labels": (dict(y_train=np.arange(10) - 1), "y_train: labels must be 0 or more, found -1"),
    "fractional-labels": (dict(y_test=np.array([0, 0.5, 1, 1])), "y_test: labels must be whole numbers 0..K-1"),
    "missing-array": (dict(y_test=None), "no array `y_test`; the file has x_train, y_train, x_test; it needs"),
    "pickled-objects": (dict(y_train=np.array([0, "a", None, 1, 0, 1, 0, 1, 0, 1], dtype=object)),
                        "array `y_train` cannot be read"),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_bad_npz(tmp_path, case):
    arrays, expected = NPZ_CASES[case]
    path = npz(tmp_path, **arrays)
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "npz", path)), f"Error: {path}")
    assert expected in train(tmp_path, config(tmp_path, "npz", path)).stderr


def test_labels_beyond_the_model_outputs(tmp_path):
    path = npz(tmp_path, y_train=np.arange(10), y_test=np.arange(4))
    cfg = config(tmp_path, "npz", path)
    assert_error(tmp_path, train(tmp_path, cfg),
                 f"Error: {cfg}:10: model.layers[1].units: {path}: labels go up to 9 (10 classes) "
                 "but the model outputs 2 values; set the last layer's units to 10")


def test_npz_that_is_not_an_archive(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"PK\x03\x04 this was cut off")
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "npz", path)),
                 f"Error: {path}: not a readable .npz archive (")


# ---------------------------------------------------------------- IDX files

def idx_folder(root: Path, n_train: int = 12, n_test: int = 4, side: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = struct.pack(">IIII", 0x803, n, side, side) + bytes(range(256)) * (n * side * side // 256 + 1)
        (root / f"{prefix}-images-idx3-ubyte").write_bytes(images[:16 + n * side * side])
        labels = struct.pack(">II", 0x801, n) + bytes(i % 2 for i in range(n))
        (root / f"{prefix}-labels-idx1-ubyte").write_bytes(labels)
    return root


def test_idx_wrong_magic_number(tmp_path):
    root = idx_folder(tmp_path / "idx")
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 0x801) + path.read_bytes()[4:])  # a labels header on an images file
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "idx", root)),
                 f"Error: {path}: wrong magic number 0x00000801, expected 0x00000803 (IDX images); "
                 "is this the right file, and not a labels/images mix-up?")


def test_idx_truncated(tmp_path):
    root = idx_folder(tmp_path / "idx")
    path = root / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "idx", root)),
                 f"Error: {path}: truncated: the header promises 144 bytes of data for shape (4, 6, 6), "
                 "the file holds 134; download it again")


def test_idx_labels_and_images_disagree(tmp_path):
    root = idx_folder(tmp_path / "idx")
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 11) + bytes(11))
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "idx", root)),
                 "x_train has 12 images but y_train has 11 labels")


def test_idx_damaged_gzip(tmp_path):
    root = idx_folder(tmp_path / "idx")
    raw = root / "train-labels-idx1-ubyte"
    packed = root / "train-labels-idx1-ubyte.gz"
    packed.write_bytes(gzip.compress(raw.read_bytes())[:-12])
    raw.unlink()
    assert_error(tmp_path, train(tmp_path, config(tmp_path, "idx", root)), f"Error: {packed}: ")
