"""`cnn compare`: runs side by side — their figures, the config keys that differ, their curves in one PNG.

A sweep directory (written by `cnn tune`) stands for its trials' run directories.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cnncli import fileio
from cnncli.config.keypaths import differences, flatten  # noqa: F401  flatten: tests import it from here
from cnncli.errors import RunError
from cnncli.train import rundir

CURVES_SIZE = (11.0, 4.5)  # inches: two panels with a legend of a dozen runs


@dataclass
class RunFigures:
    path: Path
    config: dict
    history: list[dict]
    figures: dict  # name -> value, in the order they are shown

    def as_json(self) -> dict:
        """The run as `--json` prints it."""
        return {"run_dir": Path(self.path), **self.figures}


def expand(paths: list[Path]) -> list[Path]:
    """Run directories: each given one, and every trial of each sweep directory, in trial order."""
    runs = []
    for path in map(Path, paths):
        if (path / "trials").is_dir() and not (path / "config.yaml").exists():
            trials = sorted(p for p in (path / "trials").iterdir() if (p / "config.yaml").exists())
            if not trials:
                raise RunError(f"`{path}` is a sweep directory without any trial run yet")
            runs.extend(trials)
        else:
            runs.append(rundir.find_run_dir(path))
    if len(runs) < 2:
        raise RunError("give at least two runs (or a sweep directory with two trials) to compare")
    return runs


def read_run(path: Path) -> RunFigures:
    """The figures of the run directory at `path`: its config, history and metrics."""
    info = rundir.read_json(path / "run.json")
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    history = rundir.read_history(path / "history.csv")
    metrics = rundir.read_json(path / "metrics.json") if (path / "metrics.json").exists() else {}
    phases = info.get("phases") or []
    seconds = sum(p.get("train_seconds", 0.0) for p in phases)
    examples = sum(p.get("examples", 0) for p in phases)
    last = history[-1] if history else {}
    figures = {"status": info.get("status"), "epochs": len(history)}
    # The validation figures of the weights model.keras holds (metrics.json, scored again after a best
    # epoch or the weight averages were put back); a run that did not finish has only its last epoch's.
    figures.update({k: v for k, v in last.items() if k.startswith("val_")})
    figures.update({f"val_{k}": v for k, v in (metrics.get("val") or {}).items() if isinstance(v, (int, float))})
    test = metrics.get("test") or {}
    for key, value in test.items():
        if isinstance(value, (int, float)) and key != "examples":
            figures[f"test_{key}"] = value
    if isinstance(test.get("tta"), dict):  # evaluate.tta: the mean over each image's test-time views
        figures["test_tta_accuracy"] = test["tta"]["accuracy"]
    figures.update(
        {
            "train_seconds": round(seconds, 2),
            "images_per_second": round(examples / seconds, 1) if seconds else None,
            "parameters": info.get("total_params"),
        }
    )
    return RunFigures(path, config, history, figures)


def compare(paths: list[Path], output: Path | None) -> dict:
    """Compare the runs (and sweeps' trials) at `paths`; draw their curves to `output` if given."""
    runs = [read_run(p) for p in expand(paths)]
    report: dict[str, Any] = {"runs": [r.as_json() for r in runs], "differences": differences([r.config for r in runs])}
    if output is not None:
        plot_overlay(runs, output)
        report["plot"] = Path(output)
    return report


def plot_overlay(runs: list[RunFigures], path: Path) -> Path:
    """Loss and accuracy per epoch of every run on shared axes: train solid, validation dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=CURVES_SIZE, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    labels = short_labels([r.path for r in runs])
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        for i, (run, label) in enumerate(zip(runs, labels, strict=True)):
            color = f"C{i % 10}"
            epochs = [row.get("epoch", j + 1) for j, row in enumerate(run.history)]
            for key, style in ((metric, "-"), (f"val_{metric}", "--")):
                values = [_number(row.get(key)) for row in run.history]
                if values and not all(math.isnan(v) for v in values):
                    ax.plot(
                        epochs,
                        values,
                        style,
                        color=color,
                        marker="o",
                        markersize=3,
                        label=label if style == "-" else None,
                    )
    axes[0].legend(loc="best", fontsize="small", title="solid: train, dashed: validation", title_fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    path = Path(path)
    if path.parent != Path("."):
        path.parent.mkdir(parents=True, exist_ok=True)
    fileio.write(path, buf.getvalue())
    return path


def short_labels(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of the paths that still tell the runs apart."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-n:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


GROUPED_BELOW = 1e9  # counts, seconds and images/s stay below it; beyond it digit groups only hide the size


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def cell(value: Any) -> str:
    """A value as a table shows it: floats to four significant digits, whole thousands as `11,832` (never
    `1.18e+04`), so that a learning rate of 3e-05 does not read 0.0000 either; from a billion on, `1e+21`
    again (a diverging rate is not read as a 22-digit count)."""
    if isinstance(value, float):
        return f"{value:,.0f}" if 1e4 <= abs(value) < GROUPED_BELOW else f"{value:.4g}"
    return "" if value is None else str(value)
