"""What `cnn serve` accepts as pictures, read into the model's pixels or refused with a reason.

Encoded images (multipart files, TF Serving's `{"b64": ...}`) go through the one
image reader, `cnncli.images`, exactly as `cnn predict` reads files, after a
look at the header: a picture over the pixel budget is refused before it is
decoded (a 50 kB PNG can hold a 100-megapixel image). Raw pixel arrays must
have the model's (height, width, channels) already, as TF Serving requires.
Every refusal is a `RequestError` with the HTTP status and a sentence naming
the instance or file.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import math
import re
from typing import Any

import numpy as np

from cnncli.images import CorruptImage, probe, read_image

MAX_PIXELS = 40_000_000  # per image: a 40-megapixel photo decodes to 120 MB of RGB; Pillow's own bomb limit is 89M


class RequestError(Exception):
    """A request the server refuses: answered with `status` and `{"error": message}`."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message
        super().__init__(message)


def read_picture(data: bytes, name: str, view: tuple[str, tuple[int, int]], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """uint8 (H, W, C) pixels of encoded image bytes, as the model takes them (`view`: colour mode, size)."""
    try:
        height, width, _ = probe(data, name=name)
    except CorruptImage as exc:
        raise RequestError(413 if "decompression bomb" in exc.reason else 400, str(exc)) from None
    if height * width > max_pixels:
        raise RequestError(
            413,
            f"{name}: {width}×{height} = {height * width:,} pixels is over the budget of "
            f"{max_pixels:,} pixels per image; send a smaller picture",
        )
    try:
        return read_image(data, *view, name=name)
    except CorruptImage as exc:
        raise RequestError(413 if "decompression bomb" in exc.reason else 400, str(exc)) from None


def instances_to_pixels(body: bytes, input_shape: tuple[int, ...], view: Any) -> np.ndarray:
    """float32 (N, H, W, C) of a TF Serving predict request body: `{"instances": [...]}`.

    An instance is a pixel array of the model's shape, `{"b64": "<encoded image>"}`, or either of
    them under the input's name (`{"image": ...}`), as TF Serving's row format allows.
    """
    plain = _plain_pixels(body, input_shape)
    return plain if plain is not None else read_instances(body, input_shape, view)


def read_instances(body: bytes, input_shape: tuple[int, ...], view: Any) -> np.ndarray:
    """`instances_to_pixels` for every body it takes, each instance on its own (and every refusal made here)."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise RequestError(400, f"the body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or "instances" not in doc:
        raise RequestError(
            400,
            'the body must be a JSON object with "instances": a list of images '
            '(pixel arrays, or {"b64": "<base64 of an image file>"})',
        )
    instances = doc["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError(400, '"instances" must be a non-empty list of images')
    return np.stack([_instance(item, f"instances[{i}]", input_shape, view) for i, item in enumerate(instances)])


def _instance(item, where: str, input_shape, view) -> np.ndarray:
    if isinstance(item, dict) and len(item) == 1 and "b64" not in item:
        ((key, item),) = item.items()  # a named input, as {"image": ...}
        where = f"{where}.{key}"
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise RequestError(
                400,
                f'{where}: an object instance must be {{"b64": "<base64 of an image file>"}}, got keys {sorted(item)}',
            )
        try:
            data = base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RequestError(400, f"{where}: b64 is not valid base64: {exc}") from None
        return read_picture(data, where, view).astype(np.float32)
    return _pixel_array(item, where, input_shape)


def _pixel_array(item, where: str, input_shape) -> np.ndarray:
    expected = "(" + ", ".join(map(str, input_shape)) + ")"
    try:
        with np.errstate(over="ignore"):  # a number beyond float32 becomes inf, refused below
            x = np.asarray(item, np.float32)
    except OverflowError:  # an integer beyond even float64
        raise RequestError(
            400, f"{where}: pixel values must be finite float32 numbers, got an integer too large"
        ) from None
    except (ValueError, TypeError):
        raise RequestError(
            400,
            f"{where}: not a rectangular array of numbers; the model takes pixel arrays of "
            f"shape {expected} (height, width, channels), values 0..255",
        ) from None
    if x.shape != tuple(input_shape):
        got = "(" + ", ".join(map(str, x.shape)) + ")"
        raise RequestError(
            400,
            f"{where}: an array of shape {got}; the model takes {expected} (height, width, channels), values 0..255",
        )
    if not np.isfinite(x).all():
        bad = next(v for v in x.flat if not math.isfinite(v))
        raise RequestError(400, f"{where}: pixel values must be finite float32 numbers, got {bad}")
    return x


# ---------------------------------------------------------------- the common case, parsed flat

# `{"instances": [...]}` and nothing else, its array of numbers alone (no b64, no names, no NaN)
_PLAIN_BODY = re.compile(rb"\s*\{\s*\"instances\"\s*:\s*(\[.*\])\s*\}\s*", re.DOTALL)
_NOT_NUMBERS = b"[], \t\r\n0123456789.eE+-"  # what an array of JSON numbers is written with
_BRACKETS_AS_SPACES = bytes.maketrans(b"[]", b"  ")
_NUMBERS_AND_SPACE = b" \t\r\n0123456789.eE+-"  # left out, the brackets and commas remain


def _plain_pixels(body: bytes, input_shape: tuple[int, ...]) -> np.ndarray | None:
    """The pixels of a body of plain pixel arrays of the model's shape, read flat; None for any other body,
    which the general reader then takes (and refuses with its reasons, if it must).

    Nested JSON lists cost a Python list per pixel (28×28×1 is 813 lists). Here the brackets are checked
    against the nesting of (N, *input_shape) on their own, and the JSON parser reads the numbers as one
    flat list: under half the time for a 28×28×1 image, every number still checked by the parser."""
    match = _PLAIN_BODY.fullmatch(body)
    if match is None:
        return None
    text = match.group(1)
    if text.translate(None, _NOT_NUMBERS):
        return None
    numbers = _json_numbers(text)
    size = math.prod(input_shape)
    if numbers is None or not len(numbers) or len(numbers) % size:
        return None
    one = _nesting(input_shape)  # cached per model shape; the batch's outer list is built per body
    if text.translate(None, _NUMBERS_AND_SPACE) != b"[" + b",".join([one] * (len(numbers) // size)) + b"]":
        return None  # ragged, another shape, or numbers not parted by commas
    return numbers.reshape(-1, *input_shape)


def _json_numbers(text: bytes) -> np.ndarray | None:
    """float32 of every number in `text` (brackets read as spaces), in order; None if one is not JSON's."""
    try:
        flat = json.loads(b"[" + text.translate(_BRACKETS_AS_SPACES) + b"]")
        with np.errstate(over="ignore"):
            numbers = np.array(flat, np.float32)
    except (ValueError, OverflowError):
        return None
    return numbers if np.isfinite(numbers).all() else None


@functools.lru_cache(maxsize=8)  # keyed by the model's shape alone: a hostile batch size cannot fill it
def _nesting(shape: tuple[int, ...]) -> bytes:
    """The brackets and commas of a JSON array of this shape, numbers left out: (2, 1) is `[[],[]]`."""
    text = b""
    for length in reversed(shape):
        text = b"[" + b",".join([text] * length) + b"]"
    return text
