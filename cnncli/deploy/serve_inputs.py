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
import json
import math
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
        x = np.asarray(item, np.float32)
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
        raise RequestError(400, f"{where}: pixel values must be finite numbers, got {bad}")
    return x
