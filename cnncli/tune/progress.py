"""What `cnn tune` shows: a Rich table of trials that grows as they finish, or one plain line per trial."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live
from rich.table import Table

from cnncli.train.progress import metric_text
from cnncli.tune.compare import cell

if TYPE_CHECKING:
    from cnncli.tune.sweep import TrialOutcome


def _value(v) -> str:
    """A metric as training shows it (metric_text)."""
    return metric_text(v) if isinstance(v, float) else ("" if v is None else str(v))


class SweepDisplay:
    def __init__(self, console: Console | None = None, live: bool | None = None):
        self.metric = "value"  # the searched metric's name, from the first trial
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.live = sys.stdout.isatty() if live is None else live
        self.rows: list = []
        self._live: Live | None = None

    def __enter__(self):
        if self.live:
            self._live = Live(self._table(), console=self.console, auto_refresh=False)
            self._live.start()
        return self

    def __exit__(self, *exc):
        if self._live is not None:
            self._live.stop()
        return False

    def trial(self, outcome: TrialOutcome) -> None:
        """Show a finished trial."""
        self.rows.append(outcome)
        self.metric = outcome.metric
        if self._live is not None:
            self._live.update(self._table(), refresh=True)
        else:
            params = "  ".join(f"{k}={cell(v)}" for k, v in outcome.params.items())
            tail = f"  ({outcome.message})" if outcome.message else ""
            self.console.print(
                f"trial {outcome.number:>4}  {outcome.state:<8}  {self.metric} "
                f"{_value(outcome.value) or '-'}  {outcome.seconds:.1f}s  {params}{tail}",
                markup=False,
            )

    def _table(self) -> Table:
        table = Table(title="trials", title_justify="left")
        names = list(dict.fromkeys(k for r in self.rows for k in r.params))
        for column in ("trial", "state", self.metric, "s", *names, "note"):
            table.add_column(column, justify="left" if column in ("state", "note") else "right", overflow="fold")
        for r in self.rows:
            table.add_row(
                str(r.number),
                r.state,
                _value(r.value),
                f"{r.seconds:.1f}",
                *[cell(r.params.get(n)) for n in names],
                r.message[:60],
            )
        return table
