"""kill -9 at every step of a run's life: the run directory stays whole and `--resume` finishes it.

The process kills itself with SIGKILL at a named point (CNNCLI_FAULT, see
cnncli/faults.py). Kills are chained on one run directory, as a flaky machine
would chain them: after each kill the files are checked and the run is resumed
with the next kill armed; the last resume must finish with every epoch exactly
once and the very history of a run that was never interrupted (the tiny config
is deterministic). Counts (`@n`) are per process: a resumed process counts its
own epochs from 1.
"""

from __future__ import annotations

import signal

import pytest
from conftest import EPOCHS
from harness import check_complete, check_intact, history_rows, only_run_dir

MERGE = "tensorflow.python.ops.gen_io_ops:merge_v2_checkpoints"  # inside tf.train.Checkpoint.write

# chain -> [(CNNCLI_FAULT, functions to wrap with that fault point, epochs committed once the kill has landed)]
CHAINS = {
    "before-and-during-the-first-epochs": [
        ("config_written", None, 0),  # config.yaml in place, nothing trained: resume starts from epoch 1
        ("epoch_trained@1", None, 0),  # mid-epoch: its steps are lost
        ("write:history.csv@1", None, 0),  # history.csv's new copy written, not yet renamed
        ("history_written@2", None, 1),  # epoch 2's row is in history.csv, its checkpoint is not
    ],
    "around-the-checkpoint": [
        ("checkpoint_merge@2", {MERGE: "checkpoint_merge"}, 1),  # inside TF's write: shards on disk, not merged
        ("checkpoint_written@1", None, 1),  # checkpoint complete, state.json still names the one before
        ("write:state.json@1", None, 1),  # state.json's new copy written, not yet renamed
        ("state_written@2", None, 3),  # state.json names epoch 3; older checkpoints not pruned yet
    ],
    "while-finishing": [
        ("write:run.json@4", None, 3),  # run.json after the last epoch
        ("write:model.keras", None, 3),  # model.keras's new copy written, not yet renamed
        ("model_saved", None, 3),  # model.keras in place, metrics.json not yet
        ("write:metrics.json", None, 3),
        ("metrics_written", None, 3),  # metrics.json in place, plots and run.json not yet
    ],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_kill_chain_then_resume(cnn, tiny, reference, chain):
    out = tiny.parent
    run_dir = None
    for fault, wrap, committed in CHAINS[chain]:
        args = ("train", "--resume", run_dir) if run_dir else ("train", tiny, "-o", "runs")
        killed = cnn(*args, "-q", cwd=out, fault=fault, wrap=wrap)
        assert killed.code == -signal.SIGKILL, (fault, killed)
        run_dir = only_run_dir(out / "runs")
        assert check_intact(run_dir) == committed, fault
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=out)
    assert resumed.code == 0, resumed
    assert "Traceback" not in resumed.stderr
    check_complete(run_dir, EPOCHS)
    assert history_rows(run_dir) == history_rows(reference)  # nothing lost, nothing repeated


def test_kill_before_the_config_is_saved_is_a_clear_error_on_resume(cnn, tiny):
    out = tiny.parent
    killed = cnn("train", tiny, "-o", "runs", "-q", cwd=out, fault="run_dir_created")
    assert killed.code == -signal.SIGKILL, killed
    run_dir = only_run_dir(out / "runs")
    assert list(run_dir.iterdir()) == []
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=out)
    assert resumed.code == 1, resumed
    assert resumed.stderr == (f"Error: `{run_dir}` is empty: its run stopped before it saved its config; "
                              "start it again with cnn train CONFIG\n")


# Moments for a SIGKILL from outside: the run freezes itself there (the `stop` action) and the test kills it.
OUTSIDE = [
    ("epoch_trained@2:stop", 1),  # epoch 2 trained, nothing of it saved
    ("write:state.json@1:stop", 1),  # the resumed run's epoch 2: state.json's new copy on disk, not renamed
]


@pytest.mark.slow  # a long run: CI's slow stage runs it; the default suite stays under 15 minutes
def test_kill_from_outside(cnn, tiny, reference):
    """SIGKILL sent by another process (an OOM killer, a scheduler), not raised by the run itself."""
    out = tiny.parent
    run_dir = None
    for fault, committed in OUTSIDE:
        args = ("train", "--resume", run_dir) if run_dir else ("train", tiny, "-o", "runs")
        child = cnn.start(*args, "-q", cwd=out, fault=fault)
        child.wait_until_stopped()
        child.signal(signal.SIGKILL)
        done = child.wait()
        run_dir = only_run_dir(out / "runs")
        assert done.code == -signal.SIGKILL, (fault, done)
        assert check_intact(run_dir) == committed, fault
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=out)
    assert resumed.code == 0, resumed
    check_complete(run_dir, EPOCHS)
    assert history_rows(run_dir) == history_rows(reference)
