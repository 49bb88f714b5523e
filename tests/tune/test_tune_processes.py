"""`cnn tune` as real processes: killed mid-trial and rerun, and two processes sharing one sweep.

The process that is killed, and one of the two sharing a sweep, run in their own
Python; the other runs here, through the CLI (TensorFlow is already imported:
a second start-up would double the cost of each test).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import small_config
from typer.testing import CliRunner

from cnncli.cli import app

if sys.platform != "linux":
    pytest.skip("kills `cnn` processes with signals: Linux only", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 300  # seconds for one process: a few one-epoch trials, on a loaded machine

CONFIG = small_config({"deterministic": True, "data.shapes.train_examples": 160, "runtime": None}, """\
search:
  sampler: random
  pruner: none
  params:
    train.optimizer.learning_rate: {loguniform: [0.001, 0.01]}
""")


class Tune:
    """`cnn tune ...` as its own process; `fault` sets CNNCLI_FAULT (see cnncli/faults.py)."""

    def __init__(self, *args: str, cwd: Path, fault: str | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNNCLI_")}
        env.update(PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore", MPLBACKEND="Agg", TF_CPP_MIN_LOG_LEVEL="3")
        if fault:
            env["CNNCLI_FAULT"] = fault
        self.proc = subprocess.Popen([sys.executable, "-m", "cnncli", "tune", *args], cwd=cwd, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait(self) -> tuple[int, str, str]:
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        return self.proc.returncode, out, err


def in_process(*args: str, cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, ["tune", *args])
    finally:
        os.chdir(old)


def trials(sweep: Path) -> list[tuple[int, str, str | None]]:
    """(number, state, learning rate) of every trial in the study database."""
    with sqlite3.connect(sweep / "study.db") as db:
        return db.execute("SELECT t.number, t.state, p.param_value FROM trials t LEFT JOIN trial_params p "
                          "ON p.trial_id = t.trial_id ORDER BY t.number").fetchall()


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_kill_during_the_third_trial_then_rerun_finishes_the_requested_number(tmp_path):
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    args = ("tiny.yaml", "--trials", "3", "--output", "sweep")
    code, _, err = Tune(*args, cwd=tmp_path, fault="epoch_trained@3").wait()  # each trial trains one epoch
    assert code == -9, err
    assert [state for _, state, _ in trials(tmp_path / "sweep")] == ["COMPLETE", "COMPLETE", "RUNNING"]
    done = in_process(*args, cwd=tmp_path)
    assert done.exit_code == 0, done.output
    rows = trials(tmp_path / "sweep")
    numbers = [n for n, _, _ in rows]
    assert numbers == sorted(set(numbers))  # no number twice
    states = {n: state for n, state, _ in rows}
    assert states[2] == "FAIL"  # the interrupted trial: failed, not counted...
    assert rows[3][2] == rows[2][2]  # ...and retried once with the same learning rate
    assert sum(state == "COMPLETE" for state in states.values()) == 3
    assert len(rows) == 4
    csv_text = (tmp_path / "sweep" / "trials.csv").read_text()
    assert "interrupted" in csv_text and "retry of trial 2" in csv_text
    assert sorted(p.name for p in (tmp_path / "sweep" / "trials").iterdir()) == ["0000", "0001", "0002", "0003"]


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_two_processes_on_one_sweep_run_each_trial_once(tmp_path):
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    args = ("tiny.yaml", "--trials", "4", "--output", "sweep")
    other = Tune(*args, cwd=tmp_path)
    here = in_process(*args, cwd=tmp_path)
    code, out, err = other.wait()
    assert code == 0, err
    assert here.exit_code == 0, here.output
    rows = trials(tmp_path / "sweep")
    assert [n for n, _, _ in rows] == [0, 1, 2, 3]
    assert [state for _, state, _ in rows] == ["COMPLETE"] * 4
    assert len({rate for _, _, rate in rows}) == 4  # the two samplers share a seed, yet draw apart
    runs = sorted(p.name for p in (tmp_path / "sweep" / "trials").iterdir())
    assert runs == ["0000", "0001", "0002", "0003"]
    lines = [line for text in (out, here.stdout) for line in text.splitlines() if line.startswith("trial ")]
    assert sorted(int(line.split()[1]) for line in lines) == [0, 1, 2, 3]  # each trial run by one process


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path):
    """A shared storage URL: a SQLite file, or the PostgreSQL database that .ci/run starts (its URL in
    CNNCLI_TEST_POSTGRES, e.g. postgresql://cnn:cnn@localhost/cnn_sweeps; each test its own study)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    url = os.environ.get("CNNCLI_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: set CNNCLI_TEST_POSTGRES to a database URL (.ci/run starts one)")
    return url


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_processes_with_their_own_sweep_directories_share_a_study_through_its_storage(tmp_path, storage):
    """As on two machines: each its own --output and host name, one --storage URL."""
    import optuna

    (tmp_path / "tiny.yaml").write_text(CONFIG)
    study_name = f"shared-{tmp_path.name}-{os.getpid()}"  # a PostgreSQL database outlives the test
    common = ("tiny.yaml", "--trials", "4", "--storage", storage, "--study", study_name)
    other = Tune(*common, "--output", "b", cwd=tmp_path)
    here = in_process(*common, "--output", "a", cwd=tmp_path)
    code, _, err = other.wait()
    assert code == 0, err
    assert here.exit_code == 0, here.output
    study = optuna.load_study(study_name=study_name, storage=storage)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert [t.number for t in done] == [0, 1, 2, 3]
    assert all(t.state.name == "COMPLETE" or "surplus" in t.user_attrs for t in study.trials)
    ran = {side: sorted(p.name for p in (tmp_path / side / "trials").iterdir()) for side in ("a", "b")}
    assert not set(ran["a"]) & set(ran["b"])  # each trial ran in one process
    assert sorted(ran["a"] + ran["b"]) == ["0000", "0001", "0002", "0003"]
    again = in_process(*common, "--output", "a", cwd=tmp_path)  # the study is full: only the reports
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a" / "best.yaml").read_text() == study.best_trial.user_attrs["config"]
    assert len(study.trials) == len(optuna.load_study(study_name=study_name, storage=storage).trials)
    values = [t.params["train.optimizer.learning_rate"] for t in done]
    assert len(set(values)) == 4  # both processes hold a sampler with the config's seed, yet draw apart
