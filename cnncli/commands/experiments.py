"""`cnn tune` and `cnn compare`: hyperparameter sweeps and runs side by side."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from cnncli.commands.common import JsonOption, SetOption, app, emit_json, err, handled, out, output_option
from cnncli.errors import CnnError


@app.command()
def tune(
    config: Path = typer.Argument(..., readable=False, help="Config file with a `search:` section."),
    set_: list[str] | None = SetOption,
    trials: int | None = typer.Option(None, "--trials", min=1, help="Trials to run to (default search.trials)."),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna storage URL shared by several processes or machines, "
        "e.g. postgresql+psycopg://user@host/db (default OUTPUT/study.db).",
    ),
    study: str | None = typer.Option(None, "--study", help="Study name (default: the config's name)."),
    output: Path | None = output_option(
        "The sweep directory; rerunning with it continues the study (default sweeps/<name>/<timestamp>)."
    ),
    mlflow: str | None = typer.Option(
        None, "--mlflow", metavar="URI", help="Log each trial as a child run to this MLflow tracking URI."
    ),
    json_output: bool = JsonOption,
) -> None:
    """Search the config's `search:` section with Optuna; each trial is a run directory under OUTPUT/trials/.

    Writes OUTPUT/study.db, trials.csv, best.yaml and PNG pictures; rerun the same
    command to continue an interrupted sweep, or start it twice to share the work.

    Example: cnn tune configs/shapes_cnn.yaml --trials 16 --output sweeps/shapes
    """
    with handled(json_output):
        from cnncli.tune.progress import SweepDisplay
        from cnncli.tune.report import best_trial, nothing_finished, trial_rows
        from cnncli.tune.sweep import TuneOptions, run_sweep

        opts = TuneOptions(
            config=config,
            overrides=set_ or [],
            trials=trials,
            storage=storage,
            study=study,
            output=output,
            mlflow=mlflow,
        )
        display = SweepDisplay(out)

        def started(s) -> None:
            for note in s.notes:  # stderr under --json: stdout holds the one JSON document
                (err if json_output else out).print(f"note: {note}", markup=False)
            if not json_output:
                out.print(
                    f"sweep directory: {s.dir} (the same command with --output {s.dir} continues it)", markup=False
                )

        with display if not json_output else contextlib.nullcontext():
            sweep = run_sweep(opts, on_trial=None if json_output else display.trial, on_start=started)
        failure = nothing_finished(sweep)
        if failure:
            raise CnnError(failure)
        best = best_trial(sweep)
        if json_output:
            # trials.csv names run directories relative to the sweep directory (it moves with them);
            # the JSON names every path absolute, as every --json does.
            rows = [
                {**row, "run_dir": sweep.dir / row["run_dir"] if row["run_dir"] else None} for row in trial_rows(sweep)
            ]
            emit_json(
                {
                    "sweep_dir": sweep.dir,
                    "metric": sweep.metric,
                    "trials": rows,
                    "best": None
                    if best is None
                    else {
                        "number": best.number,
                        "value": best.value,
                        "params": best.params,
                        "run_dir": sweep.dir / best.user_attrs["run_dir"],
                    },
                }
            )
            return
        if best is not None:
            from cnncli.train.progress import metric_text

            out.print(
                f"best trial {best.number}: {sweep.metric} {metric_text(best.value)}  "
                f"config: {sweep.dir / 'best.yaml'}",
                markup=False,
            )


@app.command()
def compare(
    runs: list[Path] = typer.Argument(
        ..., metavar="RUN_OR_SWEEP...", readable=False, help="Run directories, or sweep directories (all their trials)."
    ),
    output: Path | None = output_option("Draw the runs' curves, overlaid, into this PNG.", metavar="PNG"),
    json_output: bool = JsonOption,
) -> None:
    """Show runs side by side: final metrics, epochs, time, images/s, parameters, and the config keys that differ.

    Nothing is written unless --output names a PNG for the overlaid curves.

    Example: cnn compare runs/tiny/20260101-120000 runs/tiny/20260101-130000 --output compare.png
    """
    with handled(json_output):
        from cnncli.tune.compare import cell, short_labels
        from cnncli.tune.compare import compare as compare_runs

        report = compare_runs(runs, output)
        if json_output:
            emit_json(report)
            return
        from rich.table import Table

        labels = short_labels([Path(r["run_dir"]) for r in report["runs"]])
        rows = list(dict.fromkeys(k for r in report["runs"] for k in r if k != "run_dir"))
        table = Table(title="runs", title_justify="left")
        table.add_column("", min_width=max(map(len, rows), default=0))  # the names whole; the values fold
        for label in labels:
            table.add_column(label, justify="right", overflow="fold")
        for key in rows:
            table.add_row(key, *[cell(r.get(key)) for r in report["runs"]])
        out.print(table)
        diff = Table(title="config keys that differ", title_justify="left")
        diff.add_column("key", min_width=min(40, max(map(len, report["differences"]), default=0)), overflow="fold")
        for label in labels:
            diff.add_column(label, justify="right", overflow="fold")
        for key, values in report["differences"].items():
            diff.add_row(key, *map(cell, values))
        out.print(diff if report["differences"] else "the configs are the same")
        if "plot" in report:
            out.print(f"curves: {report['plot']}", markup=False)
        else:
            out.print("curves: not drawn; add --output compare.png to draw them", markup=False)
