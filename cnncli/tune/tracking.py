"""Experiment tracking: a training run logged to MLflow as it trains (optional extra `cnncli[mlflow]`).

MLflow's Keras autolog hooks `model.fit`, which cnncli's loop does not use, so
the run logs itself (LiveRun): the resolved config flattened into params, each
committed history row as metrics at step = epoch, then the pictures,
metrics.json and model.keras as artefacts, and a tag naming the run directory.
A sweep logs a parent run per study and each trial as its child.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cnncli.errors import CnnError
from cnncli.train import rundir

if TYPE_CHECKING:
    from cnncli.config.schema import TrackingSpec

STATUS = {"complete": "FINISHED", "pruned": "KILLED", "interrupted": "KILLED", "failed": "FAILED"}
NOT_METRICS = ("epoch", "phase")  # history columns that are positions, not measurements
BATCH = 100  # MLflow's limit of params per log_batch call (metrics: 1000)


def client(uri: str) -> Any:
    """An MlflowClient for `uri`, or a CnnError naming the extra when MLflow is not installed."""
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise CnnError("MLflow tracking needs the optional extra: pip install 'cnncli[mlflow]'") from None
    if uri.startswith("file:") or "://" not in uri:
        # MLflow 3 keeps its file store for reading only unless asked; a `file:` URI given to us is that request.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    if uri.startswith(("http://", "https://")):
        _check_server(uri)
        for name, value in HTTP_DEFAULTS.items():  # the user's own settings win
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


# MLflow retries an unreachable server 7 times with doubling waits (minutes) before it gives up: a run whose
# server goes away mid-way would stall that long at every epoch. Ours give up within about half a minute.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
CONNECT_SECONDS = 5
_reached: set[str] = set()


def _check_server(uri: str) -> None:
    """Refuse, before anything trains, a tracking server nothing answers at (once per URI and process)."""
    import socket
    from urllib.parse import urlsplit

    if uri in _reached:
        return
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "localhost", port), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        reason = (
            f"no answer in {CONNECT_SECONDS} s"
            if isinstance(exc, TimeoutError)
            else (exc.strerror or type(exc).__name__)
        )
        raise CnnError(
            f"MLflow at `{uri}` cannot be reached ({reason.lower()}); start the tracking server, "
            "or leave out --mlflow and tracking.mlflow"
        ) from None
    _reached.add(uri)


@contextlib.contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's own failures (an unreachable server, a bad URI) as one error line naming the URI."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        raise CnnError(f"MLflow at `{uri}`: {str(exc).strip().splitlines()[0]}") from None


def target(tracking: TrackingSpec | None, uri_option: str | None) -> tuple[str, str] | None:
    """(tracking URI, experiment) from --mlflow or the config's `tracking.mlflow`; None when not tracking."""
    spec = tracking.mlflow if tracking is not None else None
    if uri_option:
        return uri_option, (spec.experiment if spec else "cnncli")
    return (spec.uri, spec.experiment) if spec else None


def requested_by(config_path: str | Path | list[Path] | None, uri_option: str | None) -> tuple[str, str] | None:
    """Before a run starts: where it will be logged, with MLflow's presence checked now rather than after training.

    The config is only peeked at here; the job validates it in full (a broken
    `tracking:` section is reported there, with its line).
    """
    from pydantic import ValidationError

    from cnncli.config.compose import read_config_files
    from cnncli.config.schema import TrackingSpec
    from cnncli.errors import CnnError

    tracking = None
    paths = [config_path] if isinstance(config_path, (str, Path)) else list(config_path or [])
    if paths and all(Path(p).is_file() for p in paths):
        try:  # several files merge left to right and follow `extends:`, as the job reads them
            data = read_config_files(paths)[0]
        except CnnError:
            data = None  # the job reports the broken file, with its line
        if isinstance(data, dict) and isinstance(data.get("tracking"), dict):
            try:
                tracking = TrackingSpec.model_validate(data["tracking"])
            except ValidationError:
                return None
    where = target(tracking, uri_option)
    if where is not None:
        client(where[0])
    return where


def experiment_id(mlflow: Any, name: str) -> str:
    """The id of MLflow experiment `name`, created if it does not exist."""
    found = mlflow.get_experiment_by_name(name)
    return found.experiment_id if found is not None else mlflow.create_experiment(name)


def param_key(path: str) -> str:
    """MLflow keys take letters, digits, `_-. /`: model.layers[0].filters -> model.layers.0.filters."""
    return path.replace("[", ".").replace("]", "")


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested config data as `a.b.c: value` text pairs, MLflow's params."""
    if isinstance(data, dict):
        return {
            k: v
            for key, value in data.items()
            for k, v in flatten(value, f"{prefix}.{key}" if prefix else str(key)).items()
        }
    if isinstance(data, list) and any(isinstance(v, (dict, list)) for v in data):
        return {k: v for i, value in enumerate(data) for k, v in flatten(value, f"{prefix}.{i}").items()}
    return {prefix: str(data)[:6000]}


class LiveRun:
    """An MLflow run kept in step with a training run (only the chief's; other workers keep nothing).

    `start` creates it with the resolved config as params and the run directory as
    a tag (a resumed run continues the MLflow run its run.json names); `epoch` logs
    each history row as it is committed, so curves grow while the run trains; `end`
    logs any rows the live calls missed (a killed process, an unreachable server),
    the pictures, metrics.json and model.keras, and the final status. A live call
    that fails does not stop training: `end` makes the run whole, or says why not.
    """

    def __init__(self, where: tuple[str, str], parent: str | None = None, tags: dict | None = None):
        self.where, self.parent, self.tags = where, parent, dict(tags or {})
        self.run_id: str | None = None
        self.mlflow = client(where[0])

    def record(self) -> dict:
        """What run.json keeps, so that --resume continues the same MLflow run."""
        return {"mlflow": {"uri": self.where[0], "experiment": self.where[1], "run_id": self.run_id}}

    def start(self, run_dir: Path, previous: dict | None = None) -> None:
        """Start (or, for a resumed run, reopen) the MLflow run and log the config's values."""
        from mlflow.entities import Param

        run_dir = Path(run_dir)
        earlier = (previous or {}).get("mlflow") or {}
        with mlflow_errors(self.where[0]):
            if earlier.get("uri") == self.where[0] and earlier.get("run_id"):
                self.run_id = earlier["run_id"]
                self.mlflow.update_run(self.run_id, status="RUNNING")
                return
            tags = {"cnncli.run_dir": str(run_dir.resolve()), **self.tags}
            if self.parent:
                tags["mlflow.parentRunId"] = self.parent
            name = run_dir.name if self.parent else f"{run_dir.parent.name}/{run_dir.name}"
            run = self.mlflow.create_run(experiment_id(self.mlflow, self.where[1]), run_name=name, tags=tags)
            self.run_id = run.info.run_id
            config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
            params = [Param(param_key(k), v) for k, v in flatten(config).items()]
            for i in range(0, len(params), BATCH):
                self.mlflow.log_batch(self.run_id, params=params[i : i + BATCH])

    def epoch(self, row: dict) -> None:
        """Log an epoch's metrics; a failed call is made up for at the end."""
        with contextlib.suppress(Exception):  # end() logs what a failed call missed
            self.mlflow.log_batch(self.run_id, metrics=_metrics([row]))

    def end(self, run_dir: Path, status: str) -> None:
        """Log the whole history, the metrics and the artefacts, and end the MLflow run with `status`."""
        run_dir = Path(run_dir)
        with mlflow_errors(self.where[0]):
            history = rundir.read_history(run_dir / "history.csv") if (run_dir / "history.csv").exists() else []
            logged = {
                key: {m.step for m in self.mlflow.get_metric_history(self.run_id, key)}
                for key in {k for row in history for k in row if k not in NOT_METRICS}
            }
            missing = [m for m in _metrics(history) if m.step not in logged.get(m.key, ())]
            for i in range(0, len(missing), 10 * BATCH):
                self.mlflow.log_batch(self.run_id, metrics=missing[i : i + 10 * BATCH])
            for path in sorted(run_dir.glob("*.png")) + [run_dir / "metrics.json", run_dir / "model.keras"]:
                if path.exists():
                    self.mlflow.log_artifact(self.run_id, str(path))
            self.mlflow.set_tag(self.run_id, "cnncli.status", status)
            self.mlflow.set_terminated(self.run_id, STATUS.get(status, "FAILED"))


def _metrics(rows: list[dict]) -> list:
    """History rows as MLflow metrics at step = epoch (the numeric columns that are measurements)."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [
        Metric(key, float(value), now, int(row["epoch"]))
        for row in rows
        for key, value in row.items()
        if key not in NOT_METRICS and isinstance(value, (int, float))
    ]


class SweepTracker:
    """One MLflow parent run per study (shared by every process of the sweep), a child run per trial."""

    def __init__(self, where: tuple[str, str], parent: str):
        self.where, self.parent = where, parent

    @classmethod
    def open(cls, sweep: Any, uri_option: str | None) -> SweepTracker:
        """The tracker of `sweep`'s parent MLflow run, created by the first process that needs it."""
        from cnncli.tune.study import sweep_lock

        where = target(sweep.cfg.tracking, uri_option)
        assert where is not None  # opened only for a sweep that is tracked
        mlflow = client(where[0])
        with sweep_lock(sweep.dir), mlflow_errors(where[0]):
            parent = sweep.study.user_attrs.get("mlflow_parent_run")
            if parent is None:
                run = mlflow.create_run(
                    experiment_id(mlflow, where[1]),
                    run_name=sweep.study.study_name,
                    tags={"cnncli.sweep_dir": str(sweep.dir.resolve())},
                )
                parent = run.info.run_id
                sweep.study.set_user_attr("mlflow_parent_run", parent)
        return cls(where, parent)

    def trial_run(self, number: int) -> LiveRun:
        """The live run a trial's training logs to: a child of the sweep's run."""
        return LiveRun(self.where, self.parent, {"cnncli.trial": str(number)})

    def log_trial(self, outcome: Any, live: LiveRun) -> None:
        """The trial's state and message on its child run; a trial rejected before it trained gets a child run
        of its own with the sampled values and the reason."""
        from mlflow.entities import Param

        tags = {"cnncli.trial": str(outcome.number), "cnncli.trial_state": outcome.state}
        if outcome.message:
            tags["cnncli.message"] = outcome.message[:5000]
        mlflow = live.mlflow
        with mlflow_errors(self.where[0]):
            if live.run_id is not None:
                for key, value in tags.items():
                    mlflow.set_tag(live.run_id, key, value)
                return
            run = mlflow.create_run(
                experiment_id(mlflow, self.where[1]),
                run_name=f"{outcome.number:04d}",
                tags={**tags, "mlflow.parentRunId": self.parent},
            )
            mlflow.log_batch(run.info.run_id, params=[Param(param_key(k), str(v)) for k, v in outcome.params.items()])
            mlflow.set_terminated(run.info.run_id, "FAILED")

    def finish(self, sweep: Any) -> None:
        """Once the study holds its trials (whichever process ran the last one): the best trial's value and
        values on the sweep's run, its tables and pictures as artefacts, and the run ended FINISHED."""
        from cnncli.tune.report import PICTURES, best_trial
        from cnncli.tune.study import counted

        trials = sweep.study.get_trials(deepcopy=False)
        if any(t.state.name == "RUNNING" for t in trials) or sum(map(counted, trials)) < sweep.n_trials:
            return  # interrupted, timed out, or other processes still at work: the run stays open
        mlflow = client(self.where[0])
        with mlflow_errors(self.where[0]):
            best = best_trial(sweep)
            if best is not None:  # tags, not params: a continued sweep may find a better trial later
                mlflow.log_metric(self.parent, f"best_{sweep.metric}", float(best.value))
                mlflow.set_tag(self.parent, "cnncli.best_trial", str(best.number))
                for key, value in best.params.items():
                    mlflow.set_tag(self.parent, f"cnncli.best.{param_key(key)}", str(value))
            for name in ("trials.csv", "best.yaml", *PICTURES):
                if (sweep.dir / name).exists():
                    mlflow.log_artifact(self.parent, str(sweep.dir / name))
            mlflow.set_terminated(self.parent, "FINISHED")
