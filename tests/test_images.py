"""The one image reader: EXIF, 16-bit, palette, alpha, grey/RGB and size, the same in training and predict.

Every file is written here with Pillow. The training reader is `image_folder`
through `cnncli.data.load`; the predict reader is `predict_files` with the
model replaced by one that records what it is given.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnncli import images
from cnncli.config.schema import DataConfig
from cnncli.data import load
from cnncli.deploy.artifacts import Predictor
from cnncli.deploy.predict import predict_files
from cnncli.errors import DataError
from cnncli.images import CorruptImage, Probe, probe, read_image

ORIENTATION = 0x0112
RNG = np.random.default_rng(7)
PIXELS = RNG.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # not square: a rotation shows in the shape


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def jpeg_rotated(path):
    Image.fromarray(PIXELS).save(path, quality=95, exif=_exif(6))
    return path


def png_rotated(path):
    Image.fromarray(PIXELS).save(path, exif=_exif(6))
    return path


def png_16bit(path):
    ramp = np.linspace(0, 65535, 12 * 20).reshape(12, 20).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    return path


def png_palette(path):
    Image.fromarray(PIXELS).quantize(16).save(path)
    return path


def png_palette_transparent(path):
    image = Image.fromarray(PIXELS).quantize(16)
    image.save(path, transparency=3)  # palette entry 3 is transparent
    return path


def png_rgba(path):
    alpha = RNG.integers(0, 256, (12, 20, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([PIXELS, alpha], -1), "RGBA").save(path)
    return path


def png_la(path):
    Image.fromarray(np.stack([PIXELS[..., 0], PIXELS[..., 1]], -1), "LA").save(path)
    return path


def gif_grey(path):
    Image.fromarray(PIXELS[..., 0]).save(path)
    return path


WRITERS = {"rotated.jpg": jpeg_rotated, "rotated.png": png_rotated, "deep.png": png_16bit,
           "palette.png": png_palette, "clear.png": png_palette_transparent, "rgba.png": png_rgba,
           "la.png": png_la, "grey.gif": gif_grey}


class Recorder:
    """Stands in for a model: answers uniform probabilities and keeps the pixels it was given."""

    def __init__(self, input_shape):
        self.seen = None
        self.input_shape = input_shape

    def predictor(self, _path):
        def run(x):
            self.seen = np.array(x)
            return np.full((len(x), 2), 0.5, np.float32)
        return Predictor("run", "fake", ["a", "b"], self.input_shape, run)


def _training_pixels(tmp_path, name, color_mode, image_size):
    """The array `image_folder` trains on for one file (alone in class `a`, so first in the training split)."""
    root = tmp_path / "folder"
    WRITERS[name](_mkdir(root / "a") / name)
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(_mkdir(root / "b") / "filler.png")
    cfg = DataConfig(dataset="image_folder", path=str(root), validation_split=0, color_mode=color_mode,
                     image_size=image_size)
    ds = load(cfg, seed=0)
    assert ds.y_train[0] == 0
    return ds.x_train[0], root / "a" / name


def _mkdir(path):
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("name", list(WRITERS))
@pytest.mark.parametrize("color_mode, image_size", [("rgb", (12, 20)), ("grayscale", (9, 7)), ("rgb", (30, 24))])
def test_training_and_predict_read_identical_pixels(tmp_path, monkeypatch, name, color_mode, image_size):
    trained, path = _training_pixels(tmp_path, name, color_mode, image_size)
    channels = 3 if color_mode == "rgb" else 1
    recorder = Recorder((*image_size, channels))
    monkeypatch.setattr("cnncli.deploy.artifacts.open_predictor", recorder.predictor)
    predict_files("fake", [path])
    assert trained.shape == (*image_size, channels)
    assert np.array_equal(recorder.seen[0], trained.astype(np.float32))  # the model gets float32 pixel values


def test_training_without_image_size_reads_the_upright_size(tmp_path):
    trained, path = _training_pixels(tmp_path, "rotated.png", None, None)
    assert trained.shape == (20, 12, 3)  # stored 12 × 20 with "rotate 90° clockwise"
    assert np.array_equal(trained, np.rot90(PIXELS, k=-1))
    assert probe(path) == Probe(20, 12, "RGB")


def test_sixteen_bit_is_scaled_to_eight(tmp_path):
    path = png_16bit(tmp_path / "deep.png")
    stored = np.asarray(Image.open(path), np.int64)
    out = read_image(path)
    assert out.shape == (12, 20, 1) and out.dtype == np.uint8
    assert np.array_equal(out[..., 0], np.rint(stored / 257).astype(np.uint8))
    assert out.min() == 0 and out.max() == 255


def test_alpha_is_composited_on_white(tmp_path):
    rgba = np.array([[[200, 0, 0, 255], [200, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").tolist() == [[[200, 0, 0], [255, 255, 255], [127, 127, 127]]]
    assert read_image(tmp_path / "a.png", "grayscale").shape == (1, 3, 1)


def test_palette_transparency_is_composited_and_colours_kept(tmp_path):
    path = png_palette_transparent(tmp_path / "clear.png")
    with Image.open(path) as image:
        index = np.asarray(image)
        colours = np.asarray(image.convert("RGB"))
    out = read_image(path)
    assert (out[index == 3] == 255).all()
    assert np.array_equal(out[index != 3], colours[index != 3])


def test_grey_palette_and_rgb_grey_give_one_channel_on_request(tmp_path):
    path = gif_grey(tmp_path / "g.gif")
    assert read_image(path).shape == (12, 20, 1)
    assert np.array_equal(read_image(path, "rgb"), np.repeat(read_image(path), 3, axis=-1))


def test_bytes_and_tensor_scalars_read_like_the_path(tmp_path):
    path = jpeg_rotated(tmp_path / "r.jpg")
    data = path.read_bytes()
    from_path = read_image(path, "rgb", (8, 8))
    assert np.array_equal(read_image(data, "rgb", (8, 8)), from_path)
    assert np.array_equal(read_image(np.array(data, dtype=object), "rgb", (8, 8)), from_path)  # tf.numpy_function
    assert probe(data) == Probe(20, 12, "RGB")


def test_resize_matches_pillow_bilinear():
    pixels = RNG.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(pixels).resize((11, 17), Image.BILINEAR))
    assert np.array_equal(images.resize(pixels, (17, 11)), want)


@pytest.mark.parametrize("damage, reason", [
    ("truncated", "runcated"),  # Pillow says "Truncated File Read" or "image file is truncated"
    ("garbage", "cannot identify image file"),
    ("missing", "no such file"),
])
def test_unreadable_files_raise_corrupt_image_naming_the_file(tmp_path, damage, reason):
    path = tmp_path / "bad.jpg"
    if damage == "truncated":
        buffer = io.BytesIO()
        Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
        path.write_bytes(buffer.getvalue()[:600])
    elif damage == "garbage":
        path.write_text("not a picture")
    with pytest.raises(CorruptImage) as info:
        read_image(path)
    assert isinstance(info.value, DataError) and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: cannot read image (") and reason in info.value.reason
    with pytest.raises(CorruptImage, match="^shard-0 record 3: cannot read image"):
        read_image(b"nope", name="shard-0 record 3")


def test_unknown_color_mode_is_refused(tmp_path):
    with pytest.raises(DataError, match="color_mode must be one of grayscale, rgb, got `cmyk`"):
        read_image(gif_grey(tmp_path / "g.gif"), "cmyk")


def test_usable_from_tf_data_through_numpy_function(tmp_path):
    import tensorflow as tf

    good, bad = jpeg_rotated(tmp_path / "r.jpg"), tmp_path / "bad.png"
    bad.write_bytes(b"nope")

    def decode(data, path):
        return read_image(data, "grayscale", (6, 4), name=path)

    def pipeline(paths):
        ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
        return ds.map(lambda p: tf.numpy_function(decode, [tf.io.read_file(p), p], tf.uint8))

    (pixels,) = list(pipeline([good]).as_numpy_iterator())
    assert np.array_equal(pixels, read_image(good, "grayscale", (6, 4)))
    with pytest.raises(tf.errors.UnknownError, match=f"CorruptImage: {bad}: cannot read image"):
        list(pipeline([bad]).as_numpy_iterator())


MODES = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(sorted(MODES)), height=st.integers(1, 12), width=st.integers(1, 12),
       color_mode=st.sampled_from([None, "grayscale", "rgb"]),
       size=st.one_of(st.none(), st.tuples(st.integers(1, 16), st.integers(1, 16))), seed=st.integers(0, 99))
def test_any_png_reads_the_same_from_bytes_and_in_two_steps(mode, height, width, color_mode, size, seed):
    """read_image(f, m, s) == conform(read_image(f), m, s); bytes read like the file; alpha goes, channels 1 or 3."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, MODES[mode]), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode).save(buffer, "PNG")
    data = buffer.getvalue()
    out = read_image(data, color_mode, size)
    natural = 1 if mode in ("L", "LA") else 3
    channels = {"grayscale": 1, "rgb": 3, None: natural}[color_mode]
    assert out.dtype == np.uint8 and out.shape == (*(size or (height, width)), channels)
    assert np.array_equal(out, images.conform(read_image(data), color_mode, size))
    if mode in ("L", "RGB"):  # nothing to composite: the stored pixels come back
        assert np.array_equal(read_image(data), pixels[..., :natural])


@settings(max_examples=60, deadline=None)
@given(height=st.integers(1, 40), width=st.integers(1, 40), channels=st.sampled_from([1, 3]),
       size=st.tuples(st.integers(1, 48), st.integers(1, 48)), mode=st.sampled_from(["grayscale", "rgb"]),
       seed=st.integers(0, 2**32 - 1))
def test_a_split_converted_for_training_equals_each_picture_conformed_for_predict(height, width, channels, size,
                                                                                   mode, seed):
    from cnncli.data.prepare import convert

    split = np.random.default_rng(seed).integers(0, 256, (3, height, width, channels), dtype=np.uint8)
    converted = convert(split, *size, 1 if mode == "grayscale" else 3)
    for picture, trained_on in zip(split, converted, strict=True):
        assert np.array_equal(trained_on, images.conform(picture, mode, size))
