"""The one image reader: a file (or its bytes) to uint8 (H, W, C) pixels, the same way everywhere.

Training (resident and streamed), `dataset: records`, `cnn predict`,
`cnn saliency` and the export check all read pictures through `read_image`,
so a picture gets identical pixels in training and in prediction. In order:

1. Decode with Pillow, first frame only (animated GIF, MPO), fully, so a
   truncated file fails here and not later. Anything Pillow cannot read
   raises `CorruptImage` naming the file and why.
2. Turn upright by the EXIF orientation tag (`ImageOps.exif_transpose`):
   phone photos are stored sideways with a rotation tag.
3. Bring the pixels to uint8 with 1 channel (grey modes) or 3 (colour modes):
   - 16-bit grey (`I;16*`, and `I`, which Pillow uses for 16-bit PGM/TIFF)
     is scaled 0..65535 -> 0..255 (v / 257, rounded), not clipped;
   - float (`F`) pixels in [0, 1] are scaled by 255, others clipped to 0..255;
   - bilevel (`1`) becomes 0/255;
   - a palette becomes its colours, and counts as grey when every palette
     entry is grey;
   - alpha (RGBA, LA, PA, palette transparency) is composited on white, as a
     browser shows the picture: the colour under a fully transparent pixel is
     whatever the encoder left there (often black), not what anyone saw;
   - CMYK, YCbCr, LAB, HSV become RGB through Pillow.
4. `color_mode`: "grayscale" -> 1 channel (ITU-R 601-2 luma, as Pillow's
   `convert("L")`), "rgb" -> 3 (grey repeated), None keeps the channels of
   step 3.
5. `image_size` (height, width): Pillow's bilinear filter, antialiased when
   shrinking; `cnncli.data.prepare` resizes whole arrays picture by picture
   through `resize` here, so training and `cnn predict` see the same pixels.

For tf.data, wrap it with `tf.numpy_function`: a scalar string tensor arrives
as a 0-d object array, which `read_image` accepts as encoded bytes (read the
file with `tf.io.read_file` first, and pass `name=` for error messages):

    def decode(data, path):
        return read_image(data, "rgb", (224, 224), name=path)
    x = tf.numpy_function(decode, [tf.io.read_file(path), path], tf.uint8)

Raised inside a tf.data function, `CorruptImage` reaches the iterator as a
`tf.errors.UnknownError` whose message holds "CorruptImage: <name>: cannot
read image (...)"; to skip bad files, catch it inside the wrapped function.

`probe(path)` reads only the header: (height, width, mode) after EXIF
rotation, for `cnn data inspect` and memory budgets.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cnncli.errors import DataError

Source = str | os.PathLike | bytes | bytearray | memoryview | np.ndarray

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # the files image folders and `cnn predict DIR` take
COLOR_MODES = ("grayscale", "rgb")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # Pillow's modes for 16-bit grey files
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = 255  # what transparent pixels are composited on
LUMA = (19595, 38470, 7471)  # ITU-R 601-2 weights in 16-bit fixed point, as Pillow's convert("L")
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
EXIF_ORIENTATION = 0x0112

# Pillow's ways of failing on a bad file; DecompressionBombError is a plain Exception subclass
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class CorruptImage(DataError):
    """A file that cannot be read as an image: missing, not an image, truncated or too large."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: cannot read image ({reason})")


class Probe(NamedTuple):
    """What a file's header says, after EXIF rotation."""

    height: int
    width: int
    mode: str  # Pillow's mode: L, RGB, RGBA, P, I;16, CMYK, ...


# ---------------------------------------------------------------- opening


def _unwrap(source: Any) -> Any:
    """tf.numpy_function hands a scalar string over as a 0-d object array."""
    return source.item() if isinstance(source, np.ndarray) else source


def _open(source: Source) -> Image.Image:
    """A lazily decoded Pillow image; `source` is a path or the encoded bytes."""
    given = _unwrap(source)
    if isinstance(given, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(given)))
    return Image.open(given)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "it is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, UnidentifiedImageError):
        return "cannot identify image file: not a format Pillow reads (png, jpg, bmp, gif, tiff, webp, ...)"
    return str(exc) or type(exc).__name__


def _name(source: Source, name) -> str:
    """What messages call the file: `name` (str, or bytes from a tensor), else the path."""
    name = _unwrap(name)
    if name:
        return name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    source = _unwrap(source)
    return "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)


# ---------------------------------------------------------------- pixels


def is_colour(image: Image.Image) -> bool:
    """Colour by mode; a palette counts as colour when any of its entries is not grey."""
    if image.mode in GRAY_MODES:
        return False
    if image.mode in ("P", "PA"):
        palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
        return bool((palette != palette[:, :1]).any())
    return True


def _on_white(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C + 1) with alpha last -> (H, W, C) composited on white, rounded."""
    colour, alpha = pixels[..., :-1].astype(np.uint32), pixels[..., -1:].astype(np.uint32)
    return ((colour * alpha + WHITE * (255 - alpha) + 127) // 255).astype(np.uint8)


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """Bilevel, 8-bit, 16-bit and float grey to uint8 (H, W)."""
    if image.mode in SIXTEEN_BIT_MODES:
        wide = np.clip(np.asarray(image, np.int64), 0, 65535)
        return ((wide * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, 257 -> 1: scaled, not clipped
    if image.mode == "F":
        x = np.nan_to_num(np.asarray(image, np.float64))
        if x.size and x.min() >= 0 and x.max() <= 1:
            x = x * 255.0
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"), np.uint8)


def _natural(image: Image.Image) -> np.ndarray:
    """uint8 (H, W, 1) for grey images, (H, W, 3) for colour ones, alpha composited on white."""
    mode = image.mode
    if mode in ("LA", "La"):
        return _on_white(np.asarray(image.convert("LA"), np.uint8))
    if mode in GRAY_MODES:
        return _grey_to_uint8(image)[..., None]
    if mode in ("P", "PA"):
        colour = is_colour(image)
        if mode == "PA" or "transparency" in image.info:
            pixels = _on_white(np.asarray(image.convert("RGBA"), np.uint8))
        else:
            pixels = np.asarray(image.convert("RGB"), np.uint8)
        return pixels if colour else pixels[..., :1]  # a grey palette: R = G = B
    if mode in ALPHA_MODES:
        return _on_white(np.asarray(image.convert("RGBA"), np.uint8))
    return np.asarray(image if mode == "RGB" else image.convert("RGB"), np.uint8)


def with_channels(x: np.ndarray, count: int) -> np.ndarray:
    """uint8 (..., C) to 1 or 3 channels: grey is repeated, colour becomes luma exactly as Pillow's
    convert("L") computes it; whole arrays of pictures (cnncli.data.prepare) and single ones alike."""
    if x.shape[-1] == count:
        return x
    if count == 3:
        return np.repeat(x, 3, axis=-1)
    rgb = x.astype(np.uint32)
    luma = (rgb[..., 0] * LUMA[0] + rgb[..., 1] * LUMA[1] + rgb[..., 2] * LUMA[2] + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]


def to_channels(pixels: np.ndarray, color_mode: str | None) -> np.ndarray:
    """uint8 (H, W, C) to the channels `color_mode` asks for (None: unchanged): luma as Pillow's convert("L")."""
    color_mode = _unwrap(color_mode)
    if isinstance(color_mode, bytes):  # passed to tf.numpy_function as a tensor
        color_mode = color_mode.decode()
    if color_mode is None:
        return pixels
    if color_mode not in COLOR_MODES:
        raise DataError(f"color_mode must be one of {', '.join(COLOR_MODES)}, got `{color_mode}`")
    return with_channels(pixels, 1 if color_mode == "grayscale" else 3)


def resize(pixels: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """uint8 (H, W, C) to (height, width) = size: bilinear, antialiased when shrinking."""
    height, width = int(size[0]), int(size[1])
    if pixels.shape[:2] == (height, width):
        return pixels
    image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    out = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), np.uint8)
    return out if out.ndim == 3 else out[..., None]


def read_image(
    source: Source, color_mode: str | None = None, image_size: Sequence[int] | None = None, name: str | None = None
) -> np.ndarray:
    """One picture as uint8 (H, W, C), upright, alpha on white, in `color_mode`, resized to `image_size`.

    `source` is a path, or the file's encoded bytes. `name` (default: the
    path) is what error messages call the file. Raises `CorruptImage`.
    """
    where = _name(source, name)
    try:
        with _open(source) as image:
            image.load()  # decode now: a truncated file fails here, not later
            ImageOps.exif_transpose(image, in_place=True)  # no copy of an upright picture
            pixels = _natural(image)
    except READ_ERRORS as exc:
        raise CorruptImage(where, _reason(exc)) from None
    return conform(pixels, color_mode, image_size)


def conform(pixels: np.ndarray, color_mode: str | None = None, image_size: Sequence[int] | None = None) -> np.ndarray:
    """Steps 4 and 5 on pixels `read_image` returned: read_image(f, m, s) == conform(read_image(f), m, s)."""
    pixels = to_channels(pixels, color_mode)
    return resize(pixels, image_size) if image_size is not None else pixels


def model_view(input_shape: Sequence[int]) -> tuple[str, tuple[int, int]]:
    """(color_mode, image_size) that give a model with `input_shape` (height, width, 1 | 3) its pixels."""
    height, width, channels = (int(d) for d in input_shape)
    if channels not in (1, 3):
        raise DataError(f"cannot read images for {channels} channels; models here take 1 (grayscale) or 3 (rgb)")
    return ("grayscale" if channels == 1 else "rgb"), (height, width)


def read_for_model(source: Source, input_shape: Sequence[int], name: str | None = None) -> np.ndarray:
    """A picture as a model with `input_shape` (height, width, 1 | 3) takes it."""
    return read_image(source, *model_view(input_shape), name=name)


# ---------------------------------------------------------------- headers only


def _upright_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except READ_ERRORS:  # a damaged EXIF block: the decoder will say more
        orientation = None
    return (width, height) if orientation in ROTATED else (height, width)


def probe(source: Source, name: str | None = None) -> Probe:
    """(height, width, mode) from the header, height and width as `read_image` returns them; no decoding."""
    where = _name(source, name)
    try:
        with _open(source) as image:
            height, width = _upright_size(image)
            return Probe(height, width, image.mode)
    except READ_ERRORS as exc:
        raise CorruptImage(where, _reason(exc)) from None


def is_colour_file(source: Source, name: str | None = None) -> bool:
    """Whether `read_image(source)` gives 3 channels (True) or 1, from the header only."""
    where = _name(source, name)
    try:
        with _open(source) as image:
            return is_colour(image)
    except READ_ERRORS as exc:
        raise CorruptImage(where, _reason(exc)) from None
