"""run.json of a run in progress: what ran, on what, with which data, and how far it got.

Written when the run starts, at every committed epoch and at the end; `status`
says which (running, complete, interrupted, pruned, ...).
"""

from __future__ import annotations

import contextlib
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from cnncli import __version__, compat, fileio
from cnncli.data.splits import readable_count
from cnncli.errors import CnnError

if TYPE_CHECKING:
    from cnncli.config.schema import Config
    from cnncli.data.base import Dataset
    from cnncli.train.runtime import Runtime


class RunTracker(Protocol):
    """What a run needs of the MLflow run it is logged to (tune/tracking.py's LiveRun is one)."""

    run_id: str | None

    def record(self) -> dict:
        """What run.json records of the tracking."""

    def start(self, run_dir: Path, previous: dict | None = None) -> None:
        """Start the MLflow run, or reopen `previous`'s."""

    def epoch(self, row: dict) -> None:
        """Log an epoch's metrics."""

    def end(self, run_dir: Path, status: str) -> None:
        """Log what the run wrote and end the MLflow run with `status`."""


class RunRecord:
    """The part of a Session that keeps run.json (it reads the session's cfg, model, data and records)."""

    # Set by Session (session.py), which mixes this in.
    cfg: Config
    model: Any  # a keras.Model
    run_dir: Path
    runtime: Runtime
    data: Dataset
    status: str
    started: str
    phase_records: list[dict]
    best: dict
    smoke: bool
    tracker: RunTracker | None

    def write_run_json(self) -> None:
        """Write run.json: what ran, on what, with which data, and how far it got."""
        import keras
        import tensorflow as tf

        trainable = int(sum(np.prod(w.shape) for w in self.model.trainable_weights))
        fileio.write_json(
            self.run_dir / "run.json",
            {
                "name": self.cfg.name,
                "status": self.status,
                "started": self.started,
                "command": sys.argv,
                "seed": self.cfg.seed,
                "versions": {
                    "cnncli": __version__,
                    "tensorflow": tf.__version__,
                    "keras": keras.__version__,
                    "python": platform.python_version(),
                    "numpy": np.__version__,
                },
                "host": platform.node(),
                "runtime": self.runtime.as_json(),
                "data": {
                    "source": self.data.source,
                    **{split: readable_count(getattr(self.data, f"x_{split}")) for split in ("train", "val", "test")},
                    **_stream_record(self.data),
                },
                "class_names": self.data.class_names,
                "input_shape": list(self.data.input_shape),
                "total_params": int(self.model.count_params()),
                "trainable_params": trainable,
                "phases": self.phase_records,
                "best": self.best,
                "smoke": self.smoke,
                "compat": compat.report(),  # the Keras internals found and the speed-ups used (compat.py)
                **({"tracking": self.tracker.record()} if self.tracker is not None else {}),
            },
        )

    def mark(self, status: str) -> None:
        """Record `status` in run.json (on the chief) and end the MLflow run with it."""
        self.status = status
        if self.runtime.is_chief:
            self.write_run_json()
            self.end_tracking(status)

    def end_tracking(self, status: str) -> None:
        """A run that stops early (pruned, interrupted, failed) ends its MLflow run too, as far as it can:
        the error that stopped it is the one to report."""
        if self.tracker is not None and self.tracker.run_id is not None:
            with contextlib.suppress(CnnError):
                self.tracker.end(self.run_dir, status)


def _stream_record(data) -> dict:
    """How the data was fed (resident or streamed, and why), files skipped and read, for run.json.

    `skipped` is the same list whichever the cache mode: read into memory, the files found unreadable
    then; streamed, those met so far (all of them once the run has read its test split).
    """
    from cnncli.data.splits import files_opened, skipped

    if not data.cache:
        return {}
    record = {"cache": data.cache}
    splits = (data.x_train, data.x_val, data.x_test)
    record["skipped"] = sorted(set(data.skipped) | set(skipped(*splits)))
    if data.cache["mode"] != "memory":
        record["files_opened"] = files_opened(data.x_train)  # this worker's share, under several workers
    return record
