"""The check every export passes before it is kept: same images, same answers as model.keras.

Each artefact is reloaded with its own runtime (`cnncli.deploy.artifacts.load_runner`)
and its probabilities compared with Keras's on up to `CHECK_EXAMPLES` real
images of the run's data. What counts as "the same" depends on what the
format does to the numbers (`Criterion`): float formats must agree to 1e-4,
float16 weights to 1e-2, int8 must keep the top class of 98% of the images.
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.deploy.artifacts import load_runner, native_stderr_silenced, trained_precision
from cnncli.errors import DataError
from cnncli.model.predict_loop import in_batches, keras_predict

CHECK_EXAMPLES = 1000  # images compared per export: agreement resolves 0.1%, so 98% vs 97% is visible
BATCH_UINT8 = 256  # the uint8 signature is the same graph behind a cast: one batch proves it


@dataclass(frozen=True)
class Criterion:
    """What an export must achieve against model.keras on the check images."""

    max_abs_diff: float | None = None  # bound on |p_export - p_keras| over every probability
    min_agreement: float | None = None  # share of images whose top class must agree

    def describe(self) -> str:
        """The bounds in words, e.g. `max |Δp| ≤ 0.0001`."""
        parts = []
        if self.max_abs_diff is not None:
            parts.append(f"max |Δp| ≤ {self.max_abs_diff:g}")
        if self.min_agreement is not None:
            parts.append(f"top-class agreement ≥ {self.min_agreement:.0%}")
        return " and ".join(parts)

    def passed(self, max_abs_diff: float, agreement: float) -> bool:
        """Whether the measured difference and agreement are within the bounds."""
        return (self.max_abs_diff is None or max_abs_diff <= self.max_abs_diff) and (
            self.min_agreement is None or agreement >= self.min_agreement
        )


FLOAT = Criterion(max_abs_diff=1e-4)  # float32 kernels differ only in summation order
FLOAT16 = Criterion(max_abs_diff=1e-2)  # weights rounded to 11 significant bits (~5e-4 relative each)
INT8 = Criterion(min_agreement=0.98)  # 8-bit activations move probabilities; the decision must hold


def check_images(data: Any, examples: int = CHECK_EXAMPLES) -> tuple[np.ndarray, str]:
    """Up to `examples` real images as float32: the test split, else validation, else training."""
    for split in ("test", "val", "train"):
        x = getattr(data, f"x_{split}")
        if len(x):
            return x[:examples].astype(np.float32), split
    raise DataError("the run's data has no images to check the export with")


def compare(kind: str, path: Path, criterion: Criterion, x: np.ndarray, reference: np.ndarray) -> dict:
    """Reload the artefact at `path` with its own runtime; its figures against Keras's `reference`."""
    t0 = time.perf_counter()
    with quiet():
        run, _ = load_runner(kind, path)
        probs = in_batches(run, x, reference.shape[-1])
    seconds = time.perf_counter() - t0
    if probs.shape != reference.shape:
        return {
            "examples": len(x),
            "passed": False,
            "criterion": criterion.describe(),
            "error": f"output shape {probs.shape} differs from model.keras's {reference.shape}",
        }
    diff = np.abs(probs.astype(np.float64) - reference)
    agreement = float(np.mean(probs.argmax(1) == reference.argmax(1)))
    check = {
        "examples": len(x),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "class_agreement": agreement,
        "criterion": criterion.describe(),
        "passed": criterion.passed(float(diff.max()), agreement),
        "seconds": round(seconds, 3),
    }
    if kind == "saved_model":  # the uint8 signature must give the same answers as the float one
        check.update(_check_uint8_signature(path, x, probs))
    return check


def _check_uint8_signature(path: Path, x: np.ndarray, probs: np.ndarray) -> dict:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_uint8"](image=tf.constant(x[:BATCH_UINT8].astype(np.uint8)))
    same = float(np.abs(out["probabilities"].numpy() - probs[:BATCH_UINT8]).max())
    index_ok = bool(np.array_equal(out["class_index"].numpy(), probs[:BATCH_UINT8].argmax(1)))
    extra = {"uint8_signature_max_abs_diff": same, "class_index_matches": index_ok}
    if (FLOAT.max_abs_diff is not None and same > FLOAT.max_abs_diff) or not index_ok:
        extra["passed"] = False
    return extra


def reference_note(trained: Any, model: Any, x: np.ndarray, reference: np.ndarray) -> dict:
    """What 'model.keras' means in the check; for mixed-precision runs, how far bfloat16 was from float32."""
    note: dict[str, Any] = {
        "model": "model.keras",
        "trained_precision": trained_precision(trained),
        "computed_in": "float32",
    }
    if model is not trained:
        as_trained = keras_predict(trained, x)
        note["as_trained_max_abs_diff"] = float(np.abs(as_trained.astype(np.float64) - reference).max())
    return note


def describe_check(check: dict) -> str:
    """One line of figures: `max |Δp| 2.4e-07, mean 3.1e-09, top class agrees on 100.0% of 1,000 test images`."""
    if "error" in check:
        return check["error"]
    text = (
        f"max |Δp| {check['max_abs_diff']:.2e}, mean {check['mean_abs_diff']:.2e}, top class agrees on "
        f"{check['class_agreement']:.1%} of {check['examples']:,} {check.get('split', '')} images".replace("  ", " ")
    )
    return f"{text} (required: {check['criterion']})"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Converters and loaders print progress and deprecation notes to stdout; --json owns stdout."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), native_stderr_silenced():
        warnings.simplefilter("ignore")
        yield
