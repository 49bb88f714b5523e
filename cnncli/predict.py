"""`cnn predict`: image files in, the top classes with their probabilities out.

Images are read with Pillow (png, jpg, bmp, gif, and whatever else it reads),
brought to the model's colour and size by `convert_images` (the conversion
training used), and run through any model `cnncli.artifacts.open_predictor`
opens: a run directory, or an exported .keras, SavedModel, .tflite or .onnx.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnncli.errors import CnnError, DataError

DEFAULT_TOP_K = 5  # as keras.applications' decode_predictions
GRAYSCALE_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}  # everything else becomes RGB


@dataclass
class PredictResult:
    model: str  # the path given
    kind: str  # run | keras | saved_model | tflite | onnx
    rows: list[dict]  # [{"image": path, "predictions": [{"class", "probability"}]}]
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> list[dict]:
        return self.rows


def read_image(path: str | Path) -> np.ndarray:
    """One image file as uint8 (H, W) or (H, W, 3); the first frame of an animation, upright per EXIF."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)  # phone photos are stored sideways with a rotation tag
            if image.mode in GRAYSCALE_MODES:
                return _to_uint8(np.asarray(image.getchannel(0) if image.mode == "LA" else image))
            return np.asarray(image.convert("RGB"), np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: cannot read image: it is a directory") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: cannot read image: not an image format Pillow recognises "
                        "(png, jpg, bmp, gif, ...)") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files
        raise DataError(f"{path}: cannot read image: {exc}") from None


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """Bilevel, 16-bit and float grey images to 0..255."""
    if x.dtype == np.uint8:
        return x
    if x.dtype == bool:
        return x.astype(np.uint8) * 255
    x = x.astype(np.float64)
    top = 1.0 if x.max(initial=0) <= 1.0 else (255.0 if x.max() <= 255 else 65535.0)
    return np.clip(np.rint(x / top * 255), 0, 255).astype(np.uint8)


def top_k(probs: np.ndarray, class_names: list[str], k: int) -> list[dict]:
    """The k most probable classes of one probability vector, most probable first (ties: lower index)."""
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": class_names[i], "probability": float(probs[i])} for i in order]


def predict_files(model: str | Path, images: list[str | Path], k: int = DEFAULT_TOP_K) -> PredictResult:
    """Top-k predictions of `model` (run directory or exported artefact) for each image file."""
    from cnncli.artifacts import open_predictor
    from cnncli.data import convert_images

    if k < 1:
        raise CnnError(f"--top-k must be at least 1, got {k}")
    if not images:
        raise CnnError("give at least one image file")
    pictures = [read_image(path) for path in images]  # every unreadable file fails before the model loads
    predictor = open_predictor(model)
    x = convert_images(pictures, predictor.input_shape)
    probs = predictor.predict(x)
    rows = [{"image": str(path), "predictions": top_k(p, predictor.class_names, min(k, len(p)))}
            for path, p in zip(images, probs)]
    return PredictResult(str(model), predictor.kind, rows, list(predictor.warnings))


def predictions_table(result: PredictResult):
    """A Rich table: one row per (image, rank)."""
    from rich.table import Table

    table = Table(title=f"{result.model} ({result.kind})", title_justify="left")
    table.add_column("image", overflow="fold")  # a path is worth more whole than on one line
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("class", overflow="fold")
    table.add_column("probability", justify="right", no_wrap=True)
    for row in result.rows:
        for rank, p in enumerate(row["predictions"], 1):
            table.add_row(row["image"] if rank == 1 else "", str(rank), p["class"], f"{p['probability']:.4f}",
                          end_section=rank == len(row["predictions"]))
    return table
