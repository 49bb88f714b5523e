"""The optimizer's weight averages (`train.optimizer.use_ema`), put in place wherever a model is judged or kept.

Keras keeps the exponential moving average of each trainable weight as an
optimizer variable and updates it in `optimizer.apply` after each step (the
fused kernels of fused.py replace only the per-variable update, so the average
is Keras's own). `model.fit` puts the averages into the model once, at its end
(`finalize_variable_values`), and `keras.callbacks.SwapEMAWeights` swaps them in
for evaluation. This loop does the same by hand: the validation scores, the
best-epoch copies (checkpoint.save_best_only, EarlyStopping's best weights),
model.keras, metrics.json and so every export judge the averaged weights, while
the steps train on the raw ones and the resume checkpoint holds both (the
averages are optimizer variables, so tf.train.Checkpoint writes them).

The raw weights are copied out and back rather than swapped in place as
SwapEMAWeights does (a += b; b = a - b; a -= b): its rounding would change the
raw weights a little at every swap, and a resumed run would drift from the
uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def uses_ema(optimizer: Any) -> bool:
    """Whether `optimizer` (or the one a LossScaleOptimizer wraps) keeps weight averages."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return bool(getattr(inner, "use_ema", False))


def finalize(model: Any, optimizer: Any) -> None:
    """Put the averages into the model for good, as `model.fit` does at its end (no-op without use_ema)."""
    if optimizer is not None and uses_ema(optimizer):
        optimizer.finalize_variable_values(model.trainable_variables)


@contextlib.contextmanager
def averaged(model: Any, optimizer: Any) -> Iterator[None]:
    """Inside: the model holds the optimizer's averages; after: its raw weights again, bit for bit."""
    if optimizer is None or not uses_ema(optimizer):
        yield
        return
    variables = model.trainable_variables
    raw = [v.numpy() for v in variables]
    optimizer.finalize_variable_values(variables)
    try:
        yield
    finally:
        for variable, value in zip(variables, raw, strict=True):
            variable.assign(value)
