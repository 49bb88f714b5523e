"""MLflow tracking: a run's history logged row for row; a sweep's trials as child runs; the extra named when missing."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
from helpers import small_config
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()

TRACKED = {"seed": 3, "train.epochs": 3, "runtime": None}  # three epochs: rows to compare with history.csv


def config(*changes) -> str:
    return small_config(TRACKED, *changes)


def test_logged_metrics_equal_history_csv_row_for_row(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    (tmp_path / "tiny.yaml").write_text(config({"tracking": {"mlflow": {"uri": uri, "experiment": "t"}}}))
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    run_dir = Path(doc["run_dir"])
    with open(run_dir / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(doc["mlflow_run_id"])
    assert run.data.tags["cnncli.run_dir"] == str(run_dir.resolve())
    assert run.info.status == "FINISHED"
    columns = [k for k in history[0] if k != "epoch"]
    assert set(columns) <= set(run.data.metrics)
    for key in columns:
        logged = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), float(r[key])) for r in history], key
    assert run.data.params["model.layers.0.filters"] == "4"
    assert run.data.params["train.epochs"] == "3"
    artefacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "model.keras", "curves.png", "confusion_matrix.png"} <= artefacts


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_a_sweep_logs_each_trial_as_a_child_run(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    search = ("search:\n  trials: 2\n  sampler: random\n  params:\n"
              "    model.layers[0].filters: {choice: [2, 4]}\n")
    (tmp_path / "tiny.yaml").write_text(config(search, {"train.epochs": 1}))
    result = runner.invoke(app, ["tune", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "sweep"),
                                 "--mlflow", uri, "--json"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("cnncli")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.tags["cnncli.trial"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)
    parent = client.get_run(parents[0].info.run_id)  # the study is whole: its run is ended, with the best
    best = json.loads(result.stdout)["best"]
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_accuracy"] == best["value"]
    assert parent.data.tags["cnncli.best_trial"] == str(best["number"])
    assert parent.data.tags["cnncli.best.model.layers.0.filters"] == str(best["params"]["model.layers[0].filters"])
    assert {"trials.csv", "best.yaml", "optimization_history.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}


def test_without_mlflow_the_error_names_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` now fails as if not installed
    (tmp_path / "tiny.yaml").write_text(config())
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "runs"),
                                 "--mlflow", f"file:{tmp_path / 'mlruns'}"])
    assert result.exit_code == 1
    assert result.stderr == "Error: MLflow tracking needs the optional extra: pip install 'cnncli[mlflow]'\n"
    assert not (tmp_path / "runs").exists()  # refused before training


def test_metrics_reach_mlflow_as_each_epoch_ends_and_a_resumed_run_continues_its_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from cnncli.errors import Interrupted
    from cnncli.train.job import TrainOptions, run_training
    from cnncli.train.progress import Reporter
    from cnncli.tune.tracking import LiveRun

    uri = f"file:{tmp_path / 'mlruns'}"
    (tmp_path / "tiny.yaml").write_text(config({"deterministic": True}))
    client = MlflowClient(tracking_uri=uri)
    live = LiveRun((uri, "live"))
    seen = []

    def watch(row):  # called after the row is committed and logged
        seen.append(len(client.get_metric_history(live.run_id, "val_loss")))
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # Ctrl-C after the second epoch

    with pytest.raises(Interrupted):
        run_training(TrainOptions(config=tmp_path / "tiny.yaml", output=tmp_path / "runs", on_epoch=watch,
                                  tracker=live), Reporter())
    assert seen == [1, 2]  # in MLflow while the run was still training
    first_id = live.run_id
    assert client.get_run(first_id).info.status == "KILLED"
    run_dir = next((tmp_path / "runs").glob("tiny/*"))
    again = LiveRun((uri, "live"))
    result = run_training(TrainOptions(resume=run_dir, tracker=again), Reporter())
    assert again.run_id == first_id  # one MLflow run for one run directory
    run = client.get_run(first_id)
    assert run.info.status == "FINISHED" and run.data.tags["cnncli.status"] == "complete"
    with open(result.run_dir / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    assert len(history) == 3
    for key in (k for k in history[0] if k != "epoch"):
        logged = sorted(client.get_metric_history(first_id, key), key=lambda m: m.step)
        assert [(m.step, m.value) for m in logged] == [(int(r["epoch"]), float(r[key])) for r in history], key
    assert json.loads((run_dir / "run.json").read_text())["tracking"]["mlflow"]["run_id"] == first_id


def test_a_tracking_server_nothing_answers_at_is_refused_before_training(tmp_path):
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "tiny.yaml").write_text(config())
    result = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "--output", str(tmp_path / "runs"),
                                 "--mlflow", f"http://127.0.0.1:{port}"])
    assert result.exit_code == 1
    assert result.stderr == (f"Error: MLflow at `http://127.0.0.1:{port}` cannot be reached (connection refused); "
                             "start the tracking server, or leave out --mlflow and tracking.mlflow\n")
    assert not (tmp_path / "runs").exists()


def test_a_reachable_server_gets_bounded_retries_unless_the_user_set_them(monkeypatch):
    import socket

    from cnncli.tune import tracking

    for name in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        tracking.client(f"http://127.0.0.1:{server.getsockname()[1]}")
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == "1"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "60"  # the user's own setting
