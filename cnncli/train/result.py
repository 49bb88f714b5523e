"""What a finished `cnn train` hands back: shared by the job (train/job.py) and the run (train/session.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict
    run: dict  # run.json's phases and runtime
    untrained: str | None = None  # --resume of a complete run that asked for nothing more: the line to show
