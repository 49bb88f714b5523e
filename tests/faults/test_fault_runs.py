"""Runs that go wrong on their own: a diverging loss, two jobs at once, a resume of a run still training."""

from __future__ import annotations

import json
import re
import signal

import pytest
from conftest import EPOCHS, TINY
from harness import check_complete, check_intact, history_epochs, history_rows, only_run_dir, run_dirs, world_writable

# Epoch 1 trains at 0.01; from epoch 2 the rate is 0.01 * 1e30: the weights overflow float32 within a few steps.
DIVERGING = TINY.replace("  optimizer: {type: Adam, learning_rate: 0.01}\n",
                         "  optimizer: {type: SGD, learning_rate: 0.01}\n"
                         "  lr_schedule: {type: exponential, initial_learning_rate: 0.01, decay_steps: 1, "
                         "decay_rate: 1.0e+30}\n")


def test_nan_loss_stops_at_that_step_keeps_the_last_good_epoch_and_resumes_at_a_lower_rate(cnn, tmp_path):
    (tmp_path / "diverging.yaml").write_text(DIVERGING)
    done = cnn("train", "diverging.yaml", "-o", tmp_path / "runs", "-q", cwd=tmp_path)
    run_dir = only_run_dir(tmp_path / "runs")
    assert done.code == 1, done
    match = re.fullmatch(
        r"Error: the loss became NaN or infinite at epoch 2, step (\d+) \(learning rate 1e\+28\); training stopped "
        rf"and epoch 1 is kept in {re.escape(str(run_dir / 'checkpoints'))}\. "
        r"Try a lower learning rate, e\.g\. 1e\+27: lower the rates of train\.lr_schedule or train\.phases\n",
        done.stderr)
    assert match, done.stderr
    assert 1 <= int(match.group(1)) < 12  # a step inside epoch 2 (12 steps of 32 of the 360 training images)
    assert check_intact(run_dir) == 1
    assert history_epochs(run_dir) == [1]  # the diverged epoch left no row
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"

    # The rate given for the resume wins over the one in the checkpoint.
    resumed = cnn("train", "--resume", run_dir, "--set", "train.lr_schedule=null",
                  "--set", "train.optimizer.learning_rate=0.002", "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed
    check_complete(run_dir, EPOCHS)
    assert [float(row["learning_rate"]) for row in history_rows(run_dir)] == pytest.approx([0.01, 0.002, 0.002])


def test_nan_loss_in_the_first_epoch_says_how_to_set_a_lower_rate(cnn, tiny, tmp_path):
    done = cnn("train", tiny, "-o", tmp_path / "runs", "--set", "train.optimizer.type=SGD",
               "--set", "train.optimizer.learning_rate=1e30", "-q", cwd=tmp_path)
    assert done.code == 1, done
    # step 1 computes a finite loss, then its update overflows
    assert done.stderr == ("Error: the loss became NaN or infinite at epoch 1, step 2 (learning rate 1e+30); "
                           "training stopped and no epoch had completed. Try a lower learning rate, e.g. 1e+29: "
                           "--set train.optimizer.learning_rate=1e+29\n")


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_two_runs_started_together_get_their_own_directories(cnn, tiny, tmp_path):
    """Same config, same name, same second: mkdir decides, and neither run sees the other's files.

    Both run under umask 000, the most permissive there is: nothing they create may be world-writable.
    """
    first = cnn.start("train", tiny, "-o", tmp_path / "runs", "-q", cwd=tmp_path, umask=0)
    second = cnn.start("train", tiny, "-o", tmp_path / "runs", "-q", cwd=tmp_path, umask=0)
    results = [first.wait(), second.wait()]
    assert [r.code for r in results] == [0, 0], results
    dirs = run_dirs(tmp_path / "runs")
    assert len(dirs) == 2 and sorted(r.stdout.strip() for r in results) == sorted(str(d) for d in dirs)
    for run_dir in dirs:
        check_complete(run_dir, EPOCHS)
    assert world_writable(tmp_path / "runs") == []


def test_a_run_being_trained_cannot_be_resumed_twice(cnn, tiny, tmp_path):
    training = cnn.start("train", tiny, "-o", "runs", "-q", cwd=tmp_path, fault="state_written@1:stop")
    training.wait_until_stopped()
    run_dir = only_run_dir(tmp_path / "runs")
    second = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert second.code == 1, second
    assert second.stderr == (f"Error: `{run_dir}` is being trained by another process; wait for it to finish "
                             "or stop it before resuming\n")
    training.signal(signal.SIGCONT)
    assert training.wait().code == 0
    check_complete(run_dir, EPOCHS)


def test_a_damaged_run_directory_is_a_clear_error_on_resume(cnn, reference, tmp_path):
    """Files a crash cannot damage but a person can: a deleted checkpoint, a truncated state.json."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))  # a complete run is left alone
    state = json.loads((run_dir / "checkpoints" / "state.json").read_text())
    for part in run_dir.glob(state["checkpoint"] + ".*"):
        part.unlink()
    done = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert done.code == 1, done
    assert done.stderr.startswith(f"Error: cannot restore the checkpoint `{run_dir / state['checkpoint']}` "
                                  "that state.json names: "), done.stderr
    assert done.stderr.count("\n") == 1

    (run_dir / "checkpoints" / "state.json").write_text('{"phase": 0, "hist')
    done = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert done.code == 1, done
    assert done.stderr.startswith(f"Error: `{run_dir / 'checkpoints' / 'state.json'}` cannot be read: "), done.stderr
