"""Keras callbacks whose state survives `--resume`.

Keras resets EarlyStopping and ReduceLROnPlateau in `on_train_begin` (wait
counters, best value, cooldown, EarlyStopping's best weights), so a resumed run
would restart their patience and, with `restore_best_weights`, could restore the
wrong epoch. Their counters go into checkpoints/state.json with each epoch;
EarlyStopping's best weights go into `<checkpoint>.best_weights.npz`, written
before the TF checkpoint it sits beside: state.json names the prefix of both,
reconcile() and prune_checkpoints() treat them as one. The learning rate that
ReduceLROnPlateau lowered is an optimizer variable and travels in the TF
checkpoint itself.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cnncli import fileio
from cnncli.errors import RunError

# The attributes each callback keeps between epochs (Keras 3.13-3.15 names; see their on_train_begin).
CARRIED = {
    "EarlyStopping": ("wait", "best", "best_epoch", "stopped_epoch"),
    "ReduceLROnPlateau": ("wait", "cooldown_counter", "best"),
}
BEST_WEIGHTS = ".best_weights.npz"  # suffix of the checkpoint prefix


class ResumableCallbacks:
    """A keras.callbacks.CallbackList whose EarlyStopping and ReduceLROnPlateau continue where a resumed run was."""

    def __init__(self, callbacks: list, model):
        import keras

        self.callbacks = keras.callbacks.CallbackList(callbacks, model=model)
        self.carried = {type(cb).__name__: cb for cb in callbacks if type(cb).__name__ in CARRIED}

    def on_train_begin(self, saved: dict | None = None, checkpoint: Path | None = None) -> None:
        """Start, then put back what `saved` (state.json's "callbacks") held at the checkpoint `checkpoint`."""
        self.callbacks.on_train_begin()
        for name, values in (saved or {}).items():
            callback = self.carried.get(name)
            if callback is None:
                continue
            for key in CARRIED[name]:
                if key in values:
                    setattr(callback, key, values[key])
            if values.get("best_weights"):
                callback.best_weights = read_best_weights(checkpoint)

    def on_epoch_begin(self, epoch: int) -> None:
        """Pass the epoch's start on to the carried callbacks."""
        self.callbacks.on_epoch_begin(epoch)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        """Pass the epoch's end and its logs on to the carried callbacks."""
        self.callbacks.on_epoch_end(epoch, logs)

    def on_train_end(self) -> None:
        """Pass the end of training on to the carried callbacks."""
        self.callbacks.on_train_end()

    def state(self) -> dict:
        """What state.json keeps: each carried callback's counters, and whether best weights are saved."""
        out = {}
        for name, callback in self.carried.items():
            values = {key: _plain(getattr(callback, key, None)) for key in CARRIED[name]}
            if name == "EarlyStopping":
                values["best_weights"] = self.best_weights() is not None
            out[name] = values
        return out

    def best_weights(self) -> list | None:
        """The weights EarlyStopping kept as the best so far, if any."""
        es = self.carried.get("EarlyStopping")
        return getattr(es, "best_weights", None) if es is not None else None


def saved_state(state: dict | None) -> dict:
    """state.json's callback record; runs written before it existed kept EarlyStopping's counters only."""
    if not state:
        return {}
    if "callbacks" in state:
        return state["callbacks"] or {}
    return {"EarlyStopping": state["early_stopping"]} if state.get("early_stopping") else {}


def write_best_weights(prefix: Path, weights: list) -> None:
    """Save EarlyStopping's best weights beside the checkpoint at `prefix`."""
    buffer = io.BytesIO()
    np.savez(buffer, *weights)
    fileio.write(Path(f"{prefix}{BEST_WEIGHTS}"), buffer.getvalue())


def read_best_weights(prefix: Path | None) -> list:
    """The best weights saved beside the checkpoint at `prefix`."""
    path = Path(f"{prefix}{BEST_WEIGHTS}")
    try:
        with np.load(path) as saved:
            return [saved[f"arr_{i}"] for i in range(len(saved.files))]
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"cannot read EarlyStopping's best weights `{path}` that state.json names: {exc}") from None


def _plain(value):
    """A JSON-safe copy: ints stay ints, floats keep every bit (json writes repr; inf as Infinity)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, np.integer):
        return int(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
