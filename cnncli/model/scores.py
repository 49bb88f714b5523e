"""Classification metrics from predicted probabilities, as one JSON-ready dict.

This module owns the numbers `cnn evaluate` and `metrics.json` report beyond
Keras's own loss and accuracy: top-k accuracy, per-class precision / recall /
F1, the confusion matrix and the pairs of classes most often mixed up. It takes
plain numpy arrays (labels and the model's softmax outputs), so it is tested
without TensorFlow; the caller runs `model.predict` and passes the result here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cnncli.errors import DataError

EPSILON = 1e-7  # keras.config.epsilon(): Keras clips probabilities the same way, so our loss matches model.evaluate
DEFAULT_TOP_K = 5  # the classic ImageNet "top-5"; only reported when there are more than 5 classes
MOST_CONFUSED = 5  # how many off-diagonal pairs are worth reading in a terminal


def classification_report(
    y_true: np.ndarray, probs: np.ndarray, class_names: list[str], top_k: int | None = None
) -> dict:
    """Metrics of a classifier on N examples with K classes.

    `y_true` holds N integer labels in [0, K); `probs` is (N, K), one row of class
    probabilities per example (a softmax output). Returns plain Python numbers:

        {"examples", "loss", "accuracy", "top_k_accuracy": {"k", "value"},
         "per_class": [{"class", "precision", "recall", "f1", "support"}],
         "macro_f1", "confusion_matrix", "most_confused": [{"true", "predicted", "count"}]}

    `top_k_accuracy` uses `top_k` when given, otherwise 5 when K > 5, and is left
    out when neither applies. A precision or recall with nothing to divide by is
    0.0, like sklearn's `zero_division=0`.
    """
    y, p = _check(y_true, probs, class_names)
    n, k = p.shape

    predicted = p.argmax(axis=1)  # first maximum on ties, as keras' sparse_categorical_accuracy
    loss = float(np.mean(example_losses(y, p)))

    cm = np.zeros((k, k), dtype=np.int64)
    np.add.at(cm, (y, predicted), 1)
    true_pos = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted_count = cm.sum(axis=0)
    precision = _safe_divide(true_pos, predicted_count)
    recall = _safe_divide(true_pos, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)

    report: dict[str, Any] = {
        "examples": int(n),
        "loss": loss,
        "accuracy": float(true_pos.sum() / n),
    }
    top = _top_k(top_k, k)
    if top is not None:
        report["top_k_accuracy"] = {"k": top, "value": top_k_accuracy(y, p, top)}
    report["per_class"] = [
        {
            "class": str(name),
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    ]
    report["macro_f1"] = float(f1.mean())  # unweighted over all K classes, zero-support ones included
    report["confusion_matrix"] = cm.tolist()
    report["most_confused"] = most_confused(cm, class_names)
    return report


def example_losses(y: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Cross-entropy of each example: -log p(true class), (N,) float64."""
    p_true = np.asarray(probs, np.float64)[np.arange(len(y)), y]
    # Keras clips to [eps, 1 - eps] before the log; a confidently right example still costs ~1e-7.
    return -np.log(np.clip(p_true, EPSILON, 1.0 - EPSILON))


def top_k_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of examples whose true class is among the k most probable.

    Ties at the boundary count as hits, as in `tf.math.in_top_k` (which Keras's
    top-k metrics use): the true class is in the top k when fewer than k classes
    are strictly more probable.
    """
    p_true = probs[np.arange(len(y)), y]
    better = (probs > p_true[:, None]).sum(axis=1)
    return float(np.mean(better < k))


def most_confused(cm: np.ndarray, class_names: list[str], limit: int = MOST_CONFUSED) -> list[dict]:
    """The off-diagonal cells with the largest counts: most first, ties by class names."""
    cm = np.asarray(cm)
    true_idx, pred_idx = np.nonzero(cm)
    pairs = [
        (int(cm[t, q]), str(class_names[t]), str(class_names[q]))
        for t, q in zip(true_idx, pred_idx, strict=True)
        if t != q
    ]
    pairs.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": t, "predicted": q, "count": c} for c, t, q in pairs[:limit]]


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, with 0.0 where den is 0 (no warning, no NaN)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _top_k(requested: int | None, k: int) -> int | None:
    if requested is None:
        return DEFAULT_TOP_K if k > DEFAULT_TOP_K else None
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1:
        raise DataError(f"top_k must be a positive integer, got {requested!r}")
    return min(int(requested), k)  # k >= K is trivially 1.0; report the k actually used


def _check(y_true, probs, class_names) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities as arrays, or a DataError saying what does not fit."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise DataError(f"probabilities must be a 2-D array (examples, classes), got shape {p.shape}")
    n, k = p.shape
    if k != len(class_names):
        raise DataError(f"probabilities have {k} classes but {len(class_names)} class names were given")
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:  # labels as (N, 1), as some Keras datasets (cifar10) store them
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(
            f"labels must be a 1-D array of class indices, got shape {y.shape} (one-hot labels? pass their argmax)"
        )
    if len(y) != n:
        raise DataError(f"length mismatch: {len(y)} labels but {n} rows of probabilities")
    if n == 0:
        raise DataError("no examples to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        if not (np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0)):
            raise DataError(f"labels must be integer class indices, got dtype {y.dtype}")
        y = y.astype(np.int64)
    if y.max() >= k or y.min() < 0:
        bad = int(y.max()) if y.max() >= k else int(y.min())
        which = "largest" if bad >= k else "smallest"
        raise DataError(f"label {bad} ({which} label) is out of range for {k} classes; labels must be 0..{k - 1}")
    if not np.all(np.isfinite(p)):
        raise DataError("probabilities contain NaN or infinity; the model diverged or its output is not a softmax")
    return y.astype(np.int64), p


def tta_scores(y_true: np.ndarray, probs: np.ndarray, mode: str) -> dict:
    """Test-time augmentation's scores, `{"mode", "accuracy", "loss"}`, from the mean probabilities over the
    views (as `classification_report` measures them)."""
    y = np.asarray(y_true)
    return {
        "mode": mode,
        "accuracy": float(np.mean(probs.argmax(axis=1) == y)),
        "loss": float(np.mean(example_losses(y, probs))),
    }
