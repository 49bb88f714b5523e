"""Grad-CAM drawn over a picture as a PNG, for `cnn serve`'s `POST /predict?explain=gradcam`.

`gradcam_overlays(model)` is made once when the server starts (the logits copy
and the layer are found then) and called on the server's model thread with a
batch of pictures and the class each should be explained for.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

HEAT = "jet"  # as plot_gradcam's overlay in `cnn saliency --method gradcam`
ALPHA = 0.5  # the heat map's share of each pixel
SMALLEST = 224  # pixels: a 28×28 model's map is scaled up (nearest) so a phone shows more than a speck


def gradcam_overlays(model: Any) -> Callable[[np.ndarray, list[int]], list[bytes]]:
    """(pictures uint8 (N, H, W, C), classes) -> a PNG of each picture with its Grad-CAM drawn over it.

    Raises CnnError when the model has no convolution to take Grad-CAM at.
    """
    from cnncli.deploy.artifacts import float32_model
    from cnncli.insight.maps import grad_cams, last_conv
    from cnncli.insight.saliency import logits_model

    scores, _ = logits_model(float32_model(model))
    layer = last_conv(scores)

    def explain(pictures: np.ndarray, classes: list[int]) -> list[bytes]:
        cams = grad_cams(scores, pictures, classes, layer)
        return [overlay_png(picture, cam.heatmap) for picture, cam in zip(pictures, cams, strict=True)]

    return explain


def overlay_png(picture: np.ndarray, heatmap: np.ndarray) -> bytes:
    """PNG bytes of uint8 (H, W, 1 | 3) `picture` with float (H, W) `heatmap` in [0, 1] over it."""
    from matplotlib import colormaps
    from PIL import Image

    rgb = np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture
    heat = colormaps[HEAT](np.clip(heatmap, 0.0, 1.0))[..., :3] * 255.0
    blend = np.rint((1 - ALPHA) * rgb.astype(np.float64) + ALPHA * heat).astype(np.uint8)
    image = Image.fromarray(blend)
    scale = max(1, -(-SMALLEST // min(image.size)))  # whole multiples keep the pixels square
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()
