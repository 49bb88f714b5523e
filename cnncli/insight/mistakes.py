"""The worst mistakes of a model on a split: the highest-loss images and the most confused pairs, with pictures.

A mistake's loss is `evaluate.example_losses`, the term the reported mean loss
averages, so each listed loss is what Keras's sparse categorical cross-entropy
gives that image. For image folders each entry names its file, so a
mislabelled file can be found and fixed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnncli.errors import CnnError
from cnncli.model.scores import example_losses

DEFAULT_ERRORS = 16  # two rows of the gallery
PAIR_EXAMPLES = 6  # images shown per confused pair


def worst(y: np.ndarray, probs: np.ndarray, names: list[str], n: int, paths: list[str] | None = None) -> list[dict]:
    """The n examples with the highest loss, highest first (ties: lower index first)."""
    if n < 1:
        raise CnnError(f"--errors must be at least 1, got {n}")
    losses = example_losses(y, probs)
    order = np.lexsort((np.arange(len(y)), -losses))[:n]
    return [_entry(int(i), y, probs, names, losses, paths) for i in order]


def _entry(i: int, y, probs, names, losses, paths) -> dict:
    predicted = int(np.argmax(probs[i]))
    entry: dict[str, Any] = {"index": i}
    if paths is not None:
        entry["path"] = paths[i]
    entry.update(
        {
            "true": names[int(y[i])],
            "predicted": names[predicted],
            "probability": float(probs[i][predicted]),
            "loss": float(losses[i]),
        }
    )
    return entry


def pair_examples(
    y: np.ndarray,
    probs: np.ndarray,
    names: list[str],
    pairs: list[dict],
    paths: list[str] | None = None,
    per_pair: int = PAIR_EXAMPLES,
) -> list[dict]:
    """Each most-confused pair {"true", "predicted", "count"} with its highest-loss examples added."""
    losses = example_losses(y, probs)
    predicted = probs.argmax(axis=1)
    out = []
    for pair in pairs:
        t, q = names.index(pair["true"]), names.index(pair["predicted"])
        members = np.flatnonzero((y == t) & (predicted == q))
        members = members[np.lexsort((members, -losses[members]))][:per_pair]
        out.append({**pair, "examples": [_entry(int(i), y, probs, names, losses, paths) for i in members]})
    return out


def caption(entry: dict) -> str:
    """`true → predicted (probability)` under a mistake's picture."""
    return f"{entry['true']} → {entry['predicted']} ({entry['probability']:.2f})"


def draw(
    x: np.ndarray, errors: list[dict], pairs: list[dict], folder: Path, suffix: str = "", columns: int | None = None
) -> dict:
    """errors<suffix>.png (the gallery) and confused_pairs<suffix>.png (a row per pair); returns their paths."""
    from cnncli.fileio import writing
    from cnncli.insight.pictures import GALLERY_COLUMNS, plot_gallery

    written = {}
    path = folder / f"errors{suffix}.png"
    with writing(path):
        written["errors_png"] = Path(
            plot_gallery(
                [x[e["index"]] for e in errors],
                [caption(e) for e in errors],
                path,
                f"the {len(errors)} highest-loss images: true → predicted (probability)",
                columns=columns or GALLERY_COLUMNS,
            )
        )
    shown = [p for p in pairs if p["examples"]]
    if shown:
        path = folder / f"confused_pairs{suffix}.png"
        with writing(path):
            written["confused_png"] = Path(
                plot_gallery(
                    [[x[e["index"]] for e in p["examples"]] for p in shown],
                    [[caption(e) for e in p["examples"]] for p in shown],
                    path,
                    "most confused pairs",
                    columns=PAIR_EXAMPLES,
                    row_titles=[f"{p['true']} → {p['predicted']}\n×{p['count']}" for p in shown],
                )
            )
    return written
