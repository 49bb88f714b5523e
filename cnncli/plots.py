"""The PNG pictures a run leaves behind: training curves, confusion matrix, image grids.

Everything draws on a private `matplotlib.figure.Figure` with the Agg canvas,
never through pyplot, so no global state, GUI backend or display is involved
and plots can be drawn from any thread. Every file is written atomically
(fileio.replacing), so a crash never leaves a half-written PNG.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnncli import fileio
from cnncli.errors import DataError

DPI = 100  # with the inch sizes below, pixel sizes are round numbers (curves: 1000×400)
CURVES_SIZE = (10.0, 4.0)  # inches; fixed so curves of different runs line up side by side
CM_MIN_SIDE = 5.0  # inches; a 2-class matrix still has room for its colour bar and labels
CM_INCH_PER_CLASS = 0.4  # room for one rotated tick label and a 4-digit count
CM_MAX_SIDE = 40.0  # inches; cifar100 → 4000 px, big but still opens in a browser
CM_ANNOTATE_MAX = 20  # beyond this, numbers in the cells are unreadable
GRID_CELL = 1.5  # inches per image in plot_image_grid
SALIENCY_SIZE = (9.0, 3.4)  # inches: 900×340 px, three square panels and a title line
MOSAIC_CELL = 0.4  # inches per kernel in plot_kernel_mosaic: 16×16 kernels fit a 7-inch figure
MOSAIC_MARGIN = (1.0, 0.8)  # inches around a mosaic for the axis labels and ticks
LR_FIND_SIZE = (8.0, 5.0)  # inches: 800×500 px
NOT_METRICS = {"epoch", "loss", "learning_rate", "lr"}  # history columns that are not a metric


def plot_curves(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy (or the first metric) per epoch, train and validation, as a PNG.

    `history` rows look like `{"epoch": 1, "loss": .., "accuracy": .., "val_loss": ..,
    "val_accuracy": .., "learning_rate": ..}`; `val_*` and `learning_rate` may be
    missing. Values may be strings (rows read back from history.csv); empty ones
    are gaps. When a learning rate is present it is drawn on a log axis at the
    right of the loss panel.
    """
    if not history:
        raise DataError("no epochs in the history: nothing to plot")
    epochs = [_number(row.get("epoch", i + 1)) for i, row in enumerate(history)]
    metric = _first_metric(history)

    fig = Figure(figsize=CURVES_SIZE, dpi=DPI, layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    for ax, name in ((loss_ax, "loss"), (metric_ax, metric)):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        if name is None:
            ax.text(0.5, 0.5, "no metric recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.set_title(name)
        for key, label, style in ((name, "train", "-"), (f"val_{name}", "validation", "--")):
            values = _column(history, key)
            if values is not None:
                ax.plot(epochs, values, style, marker="o", markersize=3, label=label)
        if ax.lines:
            ax.legend(loc="best")
    lr = _column(history, "learning_rate")
    if lr is None:
        lr = _column(history, "lr")  # older Keras / CSVLogger spelling
    if lr is not None and np.nanmin(lr) > 0:  # a log axis needs positive values
        lr_ax = loss_ax.twinx()
        lr_ax.plot(epochs, lr, ":", color="gray", label="learning rate")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="gray")
    if len(epochs) <= 20:  # integer ticks only; beyond that matplotlib's own choice reads better
        for ax in (loss_ax, metric_ax):
            ax.set_xticks(epochs)
    return _save(fig, path)


def plot_lr_find(
    learning_rates: list[float], losses: list[float], suggested: float, path: str | Path, raw: list[float] | None = None
) -> Path:
    """The learning-rate range test (`cnn lr-find`) as a PNG: the smoothed loss against the rate on a log
    axis, the raw per-step losses faint behind it, and the suggested rate marked."""
    if not learning_rates:
        raise DataError("no steps in the range test: nothing to plot")
    fig = Figure(figsize=LR_FIND_SIZE, dpi=DPI, layout="constrained")
    ax = fig.subplots()
    if raw is not None:
        ax.plot(learning_rates, raw, color="gray", alpha=0.3, linewidth=1, label="loss per step")
    ax.plot(learning_rates, losses, label="smoothed loss")
    at = float(np.interp(np.log(suggested), np.log(learning_rates), losses))  # on the curve, between steps
    ax.axvline(suggested, color="tab:red", linestyle="--", linewidth=1)
    ax.plot([suggested], [at], "o", color="tab:red", label=f"suggested {suggested:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, alpha=0.3)
    finite = [v for v in losses if math.isfinite(v)]
    if finite:  # the smoothed curve fills the axes; the raw spikes of the divergence would squash it
        low, high = min(finite), max(finite)
        pad = 0.1 * (high - low) + 1e-3 * abs(high)
        ax.set_ylim(low - pad, high + pad)
    ax.legend(loc="best")
    return _save(fig, path)


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: str | Path, normalize: bool = True) -> Path:
    """Heat map of a confusion matrix (rows = true class, columns = predicted) as a PNG.

    With `normalize`, colours show each row as shares of its true class (so rare
    classes are as visible as common ones); the cells are annotated with the raw
    counts when there are at most 20 classes.
    """
    counts = np.asarray(cm)
    k = len(class_names)
    if counts.shape != (k, k):
        raise DataError(f"confusion matrix has shape {counts.shape} but there are {k} class names")
    if normalize:
        rows = counts.sum(axis=1, keepdims=True).astype(np.float64)
        shown = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        vmax = 1.0
    else:
        shown = counts.astype(np.float64)
        vmax = max(float(shown.max()), 1.0)

    side = cm_figure_side(k)
    fig = Figure(figsize=(side + 1.0, side), dpi=DPI, layout="constrained")  # +1 in for the colour bar
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true class" if normalize else "count")
    ax.set_xticks(range(k), labels=[str(n) for n in class_names], rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(k), labels=[str(n) for n in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix" + (" (row-normalized)" if normalize else ""))
    if k <= CM_ANNOTATE_MAX:
        for t in range(k):
            for p in range(k):
                dark = shown[t, p] > 0.5 * vmax  # white text on dark cells
                ax.text(
                    p,
                    t,
                    str(int(counts[t, p])),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
    return _save(fig, path)


def cm_figure_side(k: int) -> float:
    """Height in inches of a confusion-matrix figure for k classes."""
    return min(max(CM_MIN_SIDE, CM_INCH_PER_CLASS * k + 2.0), CM_MAX_SIDE)


def plot_image_grid(
    images: Any, path: str | Path, titles: list[str] | None = None, cmap: str = "gray", ncols: int | None = None
) -> Path:
    """A grid of images (N, H, W, C) as a PNG, each stretched to its own [0, 1] range.

    Per-image normalization is what makes learned filters readable: their
    weights are small, signed and of different scales. C is 1 (drawn with
    `cmap`) or 3 (RGB); (N, H, W) is taken as C = 1.
    """
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise DataError(f"images must be (N, H, W, 1) or (N, H, W, 3) with N > 0, got shape {x.shape}")
    if titles is not None and len(titles) != len(x):
        raise DataError(f"{len(titles)} titles for {len(x)} images")
    x = normalize_per_image(x)
    n = len(x)
    ncols = max(1, min(ncols or math.ceil(math.sqrt(n)), n))
    nrows = math.ceil(n / ncols)

    title_room = 0.25 if titles else 0.0  # inches per row
    fig = Figure(figsize=(ncols * GRID_CELL, nrows * (GRID_CELL + title_room)), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for i, ax in enumerate(axes):
        ax.set_axis_off()
        if i >= n:
            continue
        if x.shape[-1] == 1:
            ax.imshow(x[i, ..., 0], cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(x[i], interpolation="nearest")
        if titles:
            ax.set_title(str(titles[i]), fontsize=8)
    return _save(fig, path)


def plot_saliency(image: np.ndarray, saliency: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """An image, its saliency heat map and the two overlaid, side by side, as a 900×340 PNG.

    `image` is uint8 (H, W, 1 | 3) or (H, W); `saliency` is (H, W), non-negative.
    The heat map is scaled to its own maximum, so maps of different images share
    a colour scale only in shape, not in absolute size.
    """
    img = np.asarray(image)
    heat = np.asarray(saliency, dtype=np.float64)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.shape[:2] != heat.shape:
        raise DataError(f"saliency map {heat.shape} does not match the image {img.shape[:2]}")
    top = heat.max() if heat.size and heat.max() > 0 else 1.0
    fig = Figure(figsize=SALIENCY_SIZE, dpi=DPI, layout="constrained")
    panels = fig.subplots(1, 3)
    grey = dict(cmap="gray", vmin=0, vmax=255) if img.ndim == 2 else {}
    panels[0].imshow(img, interpolation="nearest", **grey)
    panels[0].set_title("image", fontsize=9)
    shown = panels[1].imshow(heat / top, cmap="inferno", vmin=0.0, vmax=1.0, interpolation="nearest")
    panels[1].set_title("saliency", fontsize=9)
    fig.colorbar(shown, ax=panels[1], fraction=0.046, pad=0.04)
    panels[2].imshow(img, interpolation="nearest", **grey)
    panels[2].imshow(heat / top, cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.55, interpolation="nearest")
    panels[2].set_title("overlay", fontsize=9)
    for ax in panels:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_kernel_mosaic(kernels: np.ndarray, path: str | Path, title: str | None = None) -> Path:
    """Kernels (rows, cols, kh, kw) as one grey mosaic, each kernel stretched to its own range.

    Rows are filters and columns input channels. One image with one-pixel gaps
    draws hundreds of kernels in the time a grid of subplots takes for a dozen.
    Size: MOSAIC_CELL inches per kernel plus MOSAIC_MARGIN.
    """
    k = np.asarray(kernels, dtype=np.float64)
    if k.ndim != 4 or 0 in k.shape:
        raise DataError(f"kernels must be (rows, cols, kh, kw), got shape {k.shape}")
    rows, cols, kh, kw = k.shape
    tiles = normalize_per_image(k.reshape(rows * cols, kh, kw)).reshape(rows, cols, kh, kw)
    mosaic = np.full((rows * (kh + 1) - 1, cols * (kw + 1) - 1), np.nan)  # NaN gaps draw as background
    for r in range(rows):
        for c in range(cols):
            mosaic[r * (kh + 1) : r * (kh + 1) + kh, c * (kw + 1) : c * (kw + 1) + kw] = tiles[r, c]
    fig = Figure(
        figsize=(cols * MOSAIC_CELL + MOSAIC_MARGIN[0], rows * MOSAIC_CELL + MOSAIC_MARGIN[1]),
        dpi=DPI,
        layout="constrained",
    )
    ax = fig.subplots()
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_facecolor("#d0d0ff")
    ax.set_xticks([c * (kw + 1) + (kw - 1) / 2 for c in range(cols)], labels=[str(c) for c in range(cols)], fontsize=7)
    ax.set_yticks([r * (kh + 1) + (kh - 1) / 2 for r in range(rows)], labels=[str(r) for r in range(rows)], fontsize=7)
    ax.set_xlabel("input channel")
    ax.set_ylabel("filter")
    ax.tick_params(length=0)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path)


def normalize_per_image(x: np.ndarray) -> np.ndarray:
    """Each image of (N, ...) scaled to [0, 1]; a constant image becomes all zeros."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(1, x.ndim))
    low = x.min(axis=axes, keepdims=True)
    span = x.max(axis=axes, keepdims=True) - low
    return np.divide(x - low, span, out=np.zeros_like(x), where=span > 0)


def _save(fig: Figure, path) -> Path:
    """Render `fig` as a PNG at `path`, atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with fileio.replacing(path, ".png") as tmp:
        FigureCanvasAgg(fig)
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _first_metric(history: list[dict]) -> str | None:
    """`accuracy` when recorded, else the first training metric in column order."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    if "accuracy" in keys:
        return "accuracy"
    for key in keys:
        if key not in NOT_METRICS and not key.startswith("val_"):
            return key
    return None


def _column(history: list[dict], key: str) -> list[float] | None:
    """One column as floats (NaN where missing), or None when no row has it."""
    values = [_number(row.get(key)) for row in history]
    return None if all(math.isnan(v) for v in values) else values


def _number(value) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
