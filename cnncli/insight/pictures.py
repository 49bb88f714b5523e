"""Pictures of what a model sees and gets wrong: Grad-CAM overlays, feature-map grids, mistake galleries.

Drawn like cnncli.plots (a private Agg Figure, written atomically through
`plots._save`); images are uint8 (H, W, 1 | 3) as the model sees them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from cnncli.errors import DataError
from cnncli.plots import DPI, SALIENCY_SIZE, _save

FEATURE_CELL = 1.3  # inches per feature-map tile, label included: 64 tiles make a ~10-inch square
GALLERY_CELL = 1.6  # inches per mistake: room for a two-line caption under a small image
GALLERY_COLUMNS = 8  # mistakes per row; 16 mistakes → two rows
HEAT = "inferno"  # the colour map of plots.plot_saliency, so the two kinds of map read alike


def _shown(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """An image ready for imshow, with the arguments that keep grey images grey at their true levels."""
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img, (dict(cmap="gray", vmin=0, vmax=255) if img.ndim == 2 else {})


def plot_gradcam(
    image: np.ndarray, gradient: np.ndarray, heatmap: np.ndarray, path: str | Path, title: str | None = None
) -> Path:
    """The image, its gradient map and its Grad-CAM drawn over it, side by side (900×340 px)."""
    img, grey = _shown(image)
    grad = np.asarray(gradient, np.float64)
    heat = np.asarray(heatmap, np.float64)
    if grad.shape != img.shape[:2] or heat.shape != img.shape[:2]:
        raise DataError(f"maps {grad.shape} and {heat.shape} do not match the image {img.shape[:2]}")
    fig = Figure(figsize=SALIENCY_SIZE, dpi=DPI, layout="constrained")
    panels = fig.subplots(1, 3)
    panels[0].imshow(img, interpolation="nearest", **grey)
    panels[0].set_title("image", fontsize=9)
    top = grad.max() if grad.size and grad.max() > 0 else 1.0
    panels[1].imshow(grad / top, cmap=HEAT, vmin=0.0, vmax=1.0, interpolation="nearest")
    panels[1].set_title("gradient", fontsize=9)
    panels[2].imshow(img, interpolation="nearest", **grey)
    shown = panels[2].imshow(heat, cmap="jet", vmin=0.0, vmax=1.0, alpha=0.5, interpolation="bilinear")
    panels[2].set_title("Grad-CAM", fontsize=9)
    fig.colorbar(shown, ax=panels[2], fraction=0.046, pad=0.04)
    for ax in panels:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def feature_grid_shape(tiles: int) -> tuple[int, int]:
    """(rows, columns) of a feature-map grid: as square as possible."""
    cols = max(1, math.ceil(math.sqrt(tiles)))
    return math.ceil(tiles / cols), cols


def plot_feature_grid(maps: np.ndarray, means: list[float], path: str | Path, title: str) -> Path:
    """One tile per channel of (h, w, n) maps, each stretched to its own range, labelled `#i μ=mean`."""
    x = np.asarray(maps, np.float64)
    if x.ndim != 3 or x.shape[-1] == 0:
        raise DataError(f"feature maps must be (h, w, channels), got shape {x.shape}")
    n = x.shape[-1]
    rows, cols = feature_grid_shape(n)
    fig = Figure(figsize=(cols * FEATURE_CELL, rows * FEATURE_CELL + 0.4), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        tile = x[..., i]
        low, high = tile.min(), tile.max()
        tile = (tile - low) / (high - low) if high > low else np.zeros_like(tile)  # per channel: shapes, not scale
        ax.imshow(tile, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"#{i}  μ={means[i]:.2g}", fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_gallery(
    images: Any,
    captions: list[str] | list[list[str]],
    path: str | Path,
    title: str,
    columns: int = GALLERY_COLUMNS,
    row_titles: list[str] | None = None,
) -> Path:
    """Images with a caption each, `columns` to a row; `row_titles` (one per row) start a new row each.

    With row titles, `images` and `captions` are lists of rows (one list per title).
    """
    rows: list[list[tuple[Any, Any]]] = (
        [list(zip(images, captions, strict=True))]
        if row_titles is None
        else [list(zip(imgs, caps, strict=True)) for imgs, caps in zip(images, captions, strict=True)]
    )
    lines = []  # (row title or None, items)
    for r, items in enumerate(rows):
        for start in range(0, max(len(items), 1), columns):
            lines.append((row_titles[r] if row_titles and start == 0 else None, items[start : start + columns]))
    if not any(items for _, items in lines):
        raise DataError("no images to draw")
    cols = min(columns, max(len(items) for _, items in lines))
    fig = Figure(figsize=(cols * GALLERY_CELL, len(lines) * (GALLERY_CELL + 0.3) + 0.4), dpi=DPI, layout="constrained")
    axes = fig.subplots(len(lines), cols, squeeze=False)
    for (label, items), line in zip(lines, axes, strict=True):
        for j, ax in enumerate(line):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(items):
                ax.set_axis_off()
                continue
            img, grey = _shown(items[j][0])
            ax.imshow(img, interpolation="nearest", **grey)
            ax.set_xlabel(items[j][1], fontsize=7)
            if j == 0 and label:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
