"""The built-in `shapes` dataset: stroked figures drawn from a seed.

Every figure is a handful of line segments (the circle an ellipse) placed with
a random scale, aspect, rotation, stroke width, position and contrast, then
rasterised analytically (pixel coverage from the distance to the nearest
segment or to the ellipse, so edges are anti-aliased) and covered in Gaussian noise. Pure
numpy from one seeded Generator, so a seed always gives byte-identical arrays.

`x` and `plus` are one figure 45 degrees apart, so their rotations stay within
±15 degrees of upright; the other figures turn freely. Position and scale vary
enough that a pixel-wise model (an MLP) must learn each figure at every place,
while a small CNN learns it once.
"""

from __future__ import annotations

import numpy as np

from cnncli.config.schema import DataConfig, ShapesSpec
from cnncli.data.base import DatasetInfo, Source, Splits

_CIRCLE = np.linspace(0, 2 * np.pi, 25)
_AROUND = 1.02 / np.cos(np.pi / 24)  # the 24-gon encloses the unit circle, with room for the distance estimate's error
_TRIANGLE = np.deg2rad([-90, 30, 150, 270])  # closed: last vertex repeats the first

# Unit-size polylines (x right, y down, within [-1, 1]); each is a list of strokes.
FIGURES: dict[str, list[np.ndarray]] = {
    "x": [np.array([[-1, 0], [1, 0]]), np.array([[0, -1], [0, 1]])],  # a plus; ROTATION turns it 45 degrees
    "o": [np.stack([np.cos(_CIRCLE), np.sin(_CIRCLE)], axis=1) * _AROUND],  # placement only: drawn as an ellipse
    "square": [np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]]) * 0.8],  # 0.8: area close to the circle's
    "triangle": [np.stack([np.cos(_TRIANGLE), np.sin(_TRIANGLE)], axis=1)],
    "plus": [np.array([[-1, 0], [1, 0]]), np.array([[0, -1], [0, 1]])],
    "line": [np.array([[-1, 0], [1, 0]])],
}

# (base angle, spread) in degrees: the rotation is base + uniform(-spread, spread).
ROTATION = {"x": (45, 15), "plus": (0, 15), "o": (0, 180), "square": (0, 45), "triangle": (0, 60), "line": (0, 90)}

SCALE = (0.22, 0.45)  # half-extent of a figure, as a fraction of the image side
ASPECT = (0.7, 1.0)  # one axis squashed before rotating: ellipses, rectangles, flat triangles
STROKE = (0.045, 0.11)  # stroke width, as a fraction of the side (1.4 to 3.5 px at 32)
BACKGROUND = (0.0, 0.3)  # grey levels in [0, 1]; the figure is always the brighter one
FOREGROUND = (0.65, 1.0)

CHUNK_PIXELS = 1 << 22  # images drawn together × pixels: bounded memory even at image_size 512
SLICE_ELEMENTS = 2_000_000  # images × segments × pixels per distance computation (~8 MB per temporary)


def _segments(figure: str) -> np.ndarray:
    """(S, 2, 2) start and end points of every segment of a unit figure."""
    return np.concatenate([np.stack([p[:-1], p[1:]], axis=1) for p in FIGURES[figure]]).astype(np.float64)


_SEGMENTS = {name: _segments(name) for name in FIGURES}


def _draw_params(rng: np.random.Generator, figures: list[str], size: int) -> dict[str, np.ndarray]:
    """All random choices for len(figures) images, drawn in one fixed order."""
    n = len(figures)
    base = np.array([ROTATION[f][0] for f in figures], dtype=np.float64)
    spread = np.array([ROTATION[f][1] for f in figures], dtype=np.float64)
    return {
        "scale": rng.uniform(*SCALE, n) * size,
        "aspect": rng.uniform(*ASPECT, n),
        "angle": np.deg2rad(base + rng.uniform(-1, 1, n) * spread),
        "stroke": rng.uniform(*STROKE, n) * size,
        "where": rng.uniform(0, 1, (n, 2)),  # position within the room left after scaling
        "background": rng.uniform(*BACKGROUND, n),
        "foreground": rng.uniform(*FOREGROUND, n),
    }


def _place(figure: str, p: dict, idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Segments (m, S, 2, 2) of images `idx` in pixel coordinates (x, y), their scale (m,) and centre (m, 2)."""
    seg = _SEGMENTS[figure][None] * np.stack([np.ones(len(idx)), p["aspect"][idx]], -1)[:, None, None]
    c, s = np.cos(p["angle"][idx]), np.sin(p["angle"][idx])
    rot = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # (m, 2, 2), row vectors times rot
    seg = np.einsum("msek,mkl->msel", seg, rot)
    half = p["stroke"][idx] / 2
    room = size / 2 - half - 1.0  # keep the whole stroke and one pixel of margin inside
    reach = np.abs(seg).reshape(len(idx), -1).max(1)
    scale = np.minimum(p["scale"][idx], room / reach)
    seg = seg * scale[:, None, None, None]
    flat = seg.reshape(len(idx), -1, 2)
    lo, hi = flat.min(1), flat.max(1)
    free_lo = half[:, None] + 1.0 - lo  # the range of valid centres, per axis
    free_hi = size - half[:, None] - 1.0 - hi
    centre = free_lo + p["where"][idx] * np.maximum(free_hi - free_lo, 0)
    return seg + centre[:, None, None, :], scale, centre


def _pixels(size: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    return np.tile(grid, size), np.repeat(grid, size)  # x and y of every pixel, row-major like the image


def _segment_distance(seg: np.ndarray, size: int) -> np.ndarray:
    """(m, P) distance from every pixel to the nearest of each image's segments."""
    seg = seg.astype(np.float32)[..., None]  # (m, S, 2 ends, 2 axes, 1 pixel)
    ax, ay = seg[:, :, 0, 0], seg[:, :, 0, 1]  # (m, S, 1)
    bx, by = seg[:, :, 1, 0] - ax, seg[:, :, 1, 1] - ay
    inv = 1 / np.maximum(bx * bx + by * by, 1e-6)
    px, py = _pixels(size)
    rx, ry = px - ax, py - ay  # (m, S, P)
    t = np.clip((rx * bx + ry * by) * inv, 0, 1)
    rx -= t * bx
    ry -= t * by
    return np.sqrt((rx * rx + ry * ry).min(1))


def _ellipse_distance(p: dict, idx: np.ndarray, scale: np.ndarray, centre: np.ndarray, size: int) -> np.ndarray:
    """(m, P) distance to each image's ellipse, to first order: |f - 1| / |grad f| for f = 1 on the curve.

    Exact on a circle and within a few percent near the stroke for the aspects
    used here; far from the curve, where the error grows, coverage is 0 anyway.
    """
    px, py = _pixels(size)
    rx = px - centre[:, :1].astype(np.float32)  # (m, P)
    ry = py - centre[:, 1:].astype(np.float32)
    c, s = np.cos(p["angle"][idx])[:, None], np.sin(p["angle"][idx])[:, None]
    u, v = rx * c + ry * s, ry * c - rx * s  # back into the ellipse's own axes
    a = (scale / _AROUND)[:, None]  # scale is the enclosing polygon's, see FIGURES
    b = a * p["aspect"][idx][:, None]
    f = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2) / np.maximum(f, 1e-6)
    return (np.abs(f - 1) / np.maximum(grad, 1e-6)).astype(np.float32)


def _coverage(figure: str, p: dict, idx: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased stroke coverage in [0, 1] of images `idx`, shape (m, size, size)."""
    seg, scale, centre = _place(figure, p, idx, size)
    if figure == "o":
        dist = _ellipse_distance(p, idx, scale, centre, size)
    else:
        dist = _segment_distance(seg, size)
    half = (p["stroke"][idx] / 2).astype(np.float32)
    return np.clip(half[:, None] + 0.5 - dist, 0, 1).reshape(len(idx), size, size)


def _coverage_all(figures: np.ndarray, p: dict, part: np.ndarray, size: int) -> np.ndarray:
    """Coverage of images `part`, a figure type and a memory-sized slice at a time."""
    out = np.empty((len(part), size, size), np.float32)
    for figure in np.unique(figures[part]):
        local = np.flatnonzero(figures[part] == figure)
        segments = 1 if figure == "o" else len(_SEGMENTS[figure])
        step = max(1, SLICE_ELEMENTS // (segments * size * size))
        for i in range(0, len(local), step):
            out[local[i : i + step]] = _coverage(figure, p, part[local[i : i + step]], size)
    return out


def _bboxes(cov: np.ndarray) -> np.ndarray:
    """(n, 4) top, left, bottom, right of the covered pixels; bottom and right are exclusive."""
    rows, cols = np.asarray(cov.any(2)), np.asarray(cov.any(1))  # (n, size) each
    size = cov.shape[1]
    top, left = rows.argmax(1), cols.argmax(1)
    bottom, right = size - rows[:, ::-1].argmax(1), size - cols[:, ::-1].argmax(1)
    return np.stack([top, left, bottom, right], 1).astype(np.int64)


def _draw(figures: np.ndarray, rng: np.random.Generator, size: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, size, size) images of `figures` and their boxes."""
    n = len(figures)
    p = _draw_params(rng, list(figures), size)
    x, boxes = np.empty((n, size, size), np.uint8), np.empty((n, 4), np.int64)
    step = max(1, CHUNK_PIXELS // (size * size))
    for start in range(0, n, step):
        part = np.arange(start, min(n, start + step))
        cov = _coverage_all(figures, p, part, size)
        grain = noise * rng.standard_normal((len(part), size, size)) if noise else 0.0
        bg, fg = p["background"][part, None, None], p["foreground"][part, None, None]
        x[part] = np.rint(np.clip(bg + (fg - bg) * cov + grain, 0, 1) * 255).astype(np.uint8)
        boxes[part] = _bboxes(cov)
    return x, boxes


def render(
    figure: str, rng: np.random.Generator, size: int = 32, noise: float = 0.0
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """One random `figure` as a uint8 (size, size) image and its bounding box.

    The box is (top, left, bottom, right) in pixels, bottom and right exclusive,
    so `image[top:bottom, left:right]` holds every pixel the figure touches.
    `noise` is the standard deviation of the pixel noise in [0, 1] units.
    """
    if figure not in FIGURES:
        raise ValueError(f"unknown figure {figure!r}; expected one of {', '.join(FIGURES)}")
    image, boxes = _draw(np.array([figure]), rng, size, noise)
    top, left, bottom, right = (int(v) for v in boxes[0])
    return image[0], (top, left, bottom, right)


def generate(spec: ShapesSpec, n: int, seed: int, split: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` images of `spec`'s figures: x uint8 (n, s, s, 1), y int64 (n,), bboxes int64 (n, 4).

    Labels are balanced (counts differ by at most one) and shuffled. `split`
    picks an independent stream for the same seed (0 train, 1 test), so the
    test images are never copies of training images.
    """
    rng = np.random.default_rng([seed, split])
    y = rng.permutation(np.arange(n) % len(spec.classes)).astype(np.int64)
    x, boxes = _draw(np.array(spec.classes)[y], rng, spec.image_size, spec.noise)
    return x[..., None], y, boxes


def _load(cfg: DataConfig, seed: int) -> Splits:
    spec = cfg.shapes
    x_train, y_train, b_train = generate(spec, spec.train_examples, seed, split=0)
    x_test, y_test, b_test = generate(spec, spec.test_examples, seed, split=1)
    return Splits(
        x_train,
        y_train,
        x_test,
        y_test,
        list(spec.classes),
        f"shapes (seed {seed})",
        bboxes={"train": b_train, "test": b_test},
    )


def _describe(cfg: DataConfig) -> DatasetInfo:
    spec = cfg.shapes
    return DatasetInfo((spec.image_size, spec.image_size, 1), len(spec.classes), list(spec.classes))


SOURCES = {"shapes": Source(_load, _describe, "built-in synthetic figures (x, o, square, ...), drawn from the seed")}
