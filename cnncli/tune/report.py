"""What a sweep directory shows: trials.csv, best.yaml and the study's pictures, each written atomically."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

from cnncli import fileio

PICTURES = {  # file name -> Optuna's matplotlib function, and what it needs to say something
    "optimization_history.png": ("plot_optimization_history", 1),
    "param_importances.png": ("plot_param_importances", 2),
    "parallel_coordinate.png": ("plot_parallel_coordinate", 1),
}


def trial_rows(sweep: Any) -> list[dict]:
    """One row per trial: number, state, the parameters (one column per searched path), the metric's value,
    seconds (wall), training seconds (steps only), epochs, run directory (under the sweep directory of the
    machine named in host), message."""
    rows = []
    assert sweep.cfg.search is not None  # a sweep's config has a search section
    names = list(sweep.cfg.search.params)
    for t in sweep.study.get_trials(deepcopy=False):
        state = t.state.name
        message = t.user_attrs.get("error", "")
        if state == "FAIL" and "error" not in t.user_attrs:
            message = "interrupted (its process stopped); not counted"
        if "retry_of" in t.user_attrs:
            message = (message + "; " if message else "") + f"retry of trial {t.user_attrs['retry_of']}"
        value = (
            t.value
            if t.value is not None
            else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None)
        )
        if "surplus" in t.user_attrs:
            message = f"not run: the study already had its {t.user_attrs['surplus']} trials"
        row = {
            "number": t.number,
            "state": state,
            **{k: t.params.get(k) for k in names},
            "value": value,
            "seconds": t.user_attrs.get("seconds"),
            "train_seconds": t.user_attrs.get("train_seconds"),
            "epochs": max(t.intermediate_values) if t.intermediate_values else 0,
            "run_dir": t.user_attrs.get("run_dir", ""),
            "host": t.user_attrs.get("host", ""),
            "message": message,
        }
        rows.append(row)
    return rows


def write_tables(sweep: Any) -> None:
    """Write the sweep's trials.csv and trials.md."""
    rows = trial_rows(sweep)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["number", "state", "value"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.write(sweep.dir / "trials.csv", buf.getvalue())
    best = best_trial(sweep)
    if best is not None:
        config = sweep.dir / best.user_attrs["run_dir"] / "config.yaml"
        text = config.read_text() if config.exists() else best.user_attrs.get("config")  # run on another machine
        if text:
            fileio.write(sweep.dir / "best.yaml", text)


def best_trial(sweep: Any) -> Any:
    """The best complete trial, or None before the first one."""
    try:
        return sweep.study.best_trial
    except ValueError:
        return None


def nothing_finished(sweep: Any) -> str | None:
    """Why a sweep whose every trial failed has no best trial (its first failure), or None."""
    trials = [t for t in sweep.study.get_trials(deepcopy=False) if "surplus" not in t.user_attrs]
    failed = [t for t in trials if t.state.name == "FAIL"]
    if not failed or any(t.state.name in ("COMPLETE", "PRUNED") for t in trials):
        return None
    first = failed[0]
    return (
        f"every trial failed ({len(failed)}), so there is no best trial; trial {first.number}: "
        f"{first.user_attrs.get('error', 'interrupted')} (all in {sweep.dir / 'trials.csv'})"
    )


def write_all(sweep: Any) -> list[Path]:
    """Write the sweep's tables and pictures; return the pictures' paths."""
    write_tables(sweep)
    return write_pictures(sweep)


def write_pictures(sweep: Any) -> list[Path]:
    """The pictures Optuna can draw from the trials so far; those it cannot yet are left out."""
    import matplotlib

    matplotlib.use("Agg")  # Optuna draws through pyplot; never a window
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.trial import TrialState

    complete = len(sweep.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    written = []
    for name, (function, needs) in PICTURES.items():
        if complete < needs:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
            try:
                ax = getattr(vis, function)(sweep.study)
            except (ValueError, RuntimeError, ZeroDivisionError):  # e.g. importances of a constant objective
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(fig)
        fileio.write(sweep.dir / name, buf.getvalue())
        written.append(sweep.dir / name)
    return written
