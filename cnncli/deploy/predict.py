"""`cnn predict`: image files in, the top classes with their probabilities out.

Images are read by `cnncli.images` (png, jpg, bmp, gif, and whatever else
Pillow reads), the reader training uses, brought to the model's colour and
size the same way, and run through any model `cnncli.deploy.artifacts.open_predictor`
opens: a run directory, or an exported .keras, SavedModel, .tflite or .onnx.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnncli.errors import CnnError
from cnncli.images import EXTENSIONS, conform, model_view, read_image  # noqa: F401  (read_image: callers import it from here)

if TYPE_CHECKING:
    from rich.table import Table

DEFAULT_TOP_K = 5  # as keras.applications' decode_predictions


@dataclass
class PredictResult:
    model: str  # the path given
    kind: str  # run | keras | saved_model | tflite | onnx
    rows: list[dict]  # [{"image": path, "predictions": [{"class", "probability"}]}]
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> list[dict]:
        """What `cnn predict --json` prints: one row per image."""
        return self.rows


def top_k(probs: np.ndarray, class_names: list[str], k: int) -> list[dict]:
    """The k most probable classes of one probability vector, most probable first (ties: lower index)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": class_names[i], "probability": float(probs[i])} for i in order]


def predict_files(model: str | Path, images: Sequence[str | Path], k: int = DEFAULT_TOP_K) -> PredictResult:
    """Top-k predictions of `model` (run directory or exported artefact) for each image file."""
    from cnncli.deploy.artifacts import open_predictor

    if k < 1:
        raise CnnError(f"--top-k must be at least 1, got {k}")
    files = image_files(images)
    pictures = [read_image(path) for path in files]  # every unreadable file fails before the model loads
    predictor = open_predictor(model)
    view = model_view(predictor.input_shape)
    x = np.stack([conform(picture, *view) for picture in pictures])
    probs = predictor.predict(x)
    rows = [
        {"image": str(path), "predictions": top_k(p, predictor.class_names, min(k, len(p)))}
        for path, p in zip(files, probs, strict=True)
    ]
    return PredictResult(str(model), predictor.kind, rows, list(predictor.warnings))


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """The files given, with each folder replaced by the pictures in it and below it, in name order."""
    files = []
    for path in map(Path, paths):
        if not path.is_dir():
            files.append(path)
            continue
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not found:
            raise CnnError(f"{path}: a folder with no pictures in it ({', '.join(EXTENSIONS)})")
        files += found
    if not files:
        raise CnnError("give at least one image file")
    return files


def predictions_table(result: PredictResult) -> Table:
    """A Rich table: one row per (image, rank)."""
    from rich.table import Table

    table = Table(title=f"{result.model} ({result.kind})", title_justify="left")
    table.add_column("image", overflow="fold")  # a path is worth more whole than on one line
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("class", overflow="fold")
    table.add_column("probability", justify="right", no_wrap=True)
    for row in result.rows:
        for rank, p in enumerate(row["predictions"], 1):
            table.add_row(
                row["image"] if rank == 1 else "",
                str(rank),
                p["class"],
                f"{p['probability']:.4f}",
                end_section=rank == len(row["predictions"]),
            )
    return table
