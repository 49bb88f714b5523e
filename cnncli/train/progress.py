"""What the user sees while a run trains: live bars, plain lines, or nothing.

The loop calls a reporter at chunk and epoch boundaries only; nothing here
runs inside a training step.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

_SHORT = {
    "learning_rate": "lr",
    "seconds": "s",
    "examples_per_second": "img/s",
    "val_accuracy": "val_acc",
    "accuracy": "acc",
    "waiting_for_data": "wait",
}  # table headers that fit an 80-column terminal


def metric_text(value: float) -> str:
    """A loss or an accuracy: four decimals, as they are read; from 10,000 on (a diverging loss) four significant
    digits, `3.2e+15` rather than 16 digits and four decimals."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _logs_text(logs: dict) -> str:
    return "  ".join(
        f"{k} {metric_text(v)}" if isinstance(v, float) else f"{k} {v}"
        for k, v in logs.items()
        if k not in ("epoch", "learning_rate", "seconds", "examples_per_second", "phase", "waiting_for_data")
    )


def _bottleneck(row: dict) -> str:
    """Streamed data: which side the steps waited on (share of the epoch spent waiting for batches)."""
    share = row.get("waiting_for_data")
    if share is None:
        return ""
    return (
        f"  input-bound ({share:.0%} waiting for data)"
        if share >= 0.5
        else f"  model-bound ({share:.0%} waiting for data)"
    )


class Reporter:
    """Silent base: --quiet and --json use it as is."""

    def message(self, text: str) -> None:
        """Show one line of information."""
        pass

    def warning(self, text: str) -> None:
        """Something the user must see even with --quiet or --json (skipped images, say): stderr."""
        print(f"warning: {text}", file=sys.stderr, flush=True)

    def train_begin(self, total_epochs: int, steps: int) -> None:
        """Training starts: `total_epochs` of `steps` steps each."""
        pass

    def first_pass(self, split: str, done: int, total: int, seconds: float) -> None:
        """Progress of decoding a split into the disk cache (called every few seconds)."""
        pass

    def epoch_begin(self, epoch: int, total_epochs: int, steps: int) -> None:
        """An epoch starts."""
        pass

    def chunk(self, steps_done: int, steps: int, logs: dict, seconds: float, examples: int) -> None:
        """Some steps of the epoch are done."""
        pass

    def epoch_end(self, row: dict) -> None:
        """An epoch is done; `row` is its line of history.csv."""
        pass

    def train_end(self) -> None:
        """Training is done."""
        pass


class PlainReporter(Reporter):
    """One line per epoch: for logs and CI, where bars would be noise."""

    def __init__(self, stream=None):
        self.console = Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        """Print one line of information."""
        self.console.print(text)

    def first_pass(self, split: str, done: int, total: int, seconds: float) -> None:
        """Print how far decoding a split into its disk cache has got."""
        rate = done / seconds if seconds > 0 else 0.0
        eta = f", {(total - done) / rate:.0f}s left" if rate and done < total else ""
        self.console.print(f"caching {split}: {done:,}/{total:,} images decoded, {rate:,.0f} img/s{eta}")

    def epoch_end(self, row: dict) -> None:
        """Print the epoch's line: metrics, learning rate, speed and time."""
        lr = f"  lr {row['learning_rate']:.3g}" if "learning_rate" in row else ""
        self.console.print(
            f"epoch {row['epoch']:>3}  {_logs_text(row)}{lr}  "
            f"{row['examples_per_second']:,.0f} img/s  {row['seconds']:.1f}s{_bottleneck(row)}"
        )


class RichReporter(PlainReporter):
    """A live bar per epoch (steps, images/s, loss, ETA) and a table of finished epochs."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(highlight=False)
        self.table_rows: list[dict] = []
        self.progress: Progress | None = None
        self.task: TaskID | None = None

    def epoch_begin(self, epoch: int, total_epochs: int, steps: int) -> None:
        """Start the epoch's progress bar."""
        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{total_epochs}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=steps, info="")
        self._t0 = time.perf_counter()

    def chunk(self, steps_done: int, steps: int, logs: dict, seconds: float, examples: int) -> None:
        """Move the bar on, with the speed and the running metrics."""
        if self.progress is not None and self.task is not None:
            rate = examples / seconds if seconds > 0 else 0.0
            self.progress.update(self.task, completed=steps_done, info=f"{rate:,.0f} img/s  {_logs_text(logs)}")

    def epoch_end(self, row: dict) -> None:
        """Close the bar and keep the epoch's row for the table."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        super().epoch_end(row)
        self.table_rows.append(row)

    def train_end(self) -> None:
        """Print the table of finished epochs."""
        if not self.table_rows:
            return
        keys = [k for k in self.table_rows[0] if k not in ("phase",)]
        table = Table(title="history", title_justify="left")
        for key in keys:
            table.add_column(_SHORT.get(key, key), justify="right", no_wrap=True)
        for row in self.table_rows:
            table.add_row(
                *[f"{row.get(k):.4g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
            )
        self.console.print(table)


def make_reporter(quiet: bool, json_output: bool) -> Reporter:
    """The reporter for this output: silent for --quiet and --json, live bars on a terminal, lines otherwise."""
    if quiet or json_output:
        return Reporter()
    if sys.stdout.isatty():
        return RichReporter()
    return PlainReporter()
