"""kill -9 with EarlyStopping and ReduceLROnPlateau at work: the resumed run is the uninterrupted one.

Keras resets both callbacks in on_train_begin; a resume must carry their
counters, best values, the lowered learning rate and EarlyStopping's best
weights (restore_best_weights) through the checkpoint. The config is chosen so
that both act: the rate is halved after epochs 3 and 5 and training stops after
epoch 6, restoring epoch 4's weights. Kills land mid-epoch (patience counters
half-way), after a commit, and after the stop, before the model is saved.
"""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY
from harness import check_intact, history_epochs, only_run_dir, temporary_files, uninterrupted

CALLBACKS = TINY.replace("  epochs: 3\n", "  epochs: 8\n").replace(
    "  optimizer: {type: Adam, learning_rate: 0.01}\n",
    "  optimizer: {type: Adam, learning_rate: 0.01}\n"
    "  early_stopping: {monitor: val_loss, patience: 2, min_delta: 0.02, restore_best_weights: true}\n"
    "  lr_schedule: {type: reduce_on_plateau, monitor: val_loss, factor: 0.5, patience: 1, min_delta: 0.05}\n")
STOPPED_AFTER = 6

# (CNNCLI_FAULT, epochs committed once the kill has landed); counts are per process
KILLS = [
    ("epoch_trained@3", 2),  # mid-epoch 3: ReduceLROnPlateau has waited one epoch, EarlyStopping is counting
    ("history_written@2", 3),  # epoch 4 logged (history.csv, TensorBoard) but not committed: it is lost
    ("state_written@1", 4),  # epoch 4 committed: the rate was halved once, the best weights are epoch 4's
    ("training_done", STOPPED_AFTER),  # stopped early and committed; the best weights not yet saved as the model
]


def _weights(path: Path) -> list:
    import keras

    import cnncli.model.preprocessing  # noqa: F401  registers cnncli's layers

    return keras.models.load_model(path, compile=False).get_weights()


def _scalars(run_dir: Path) -> list[tuple[str, str, int]]:
    """(folder, tag, step) of every summary in the run's TensorBoard event files, sorted."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    found = []
    for path in (run_dir / "logs").rglob("events.out.tfevents.*"):
        for event in EventFileLoader(str(path)).Load():
            found += [(path.parent.name, value.tag, event.step) for value in event.summary.value]
    return sorted(found)


@pytest.fixture(scope="module")
def reference_run(cnn, tmp_path_factory) -> Path:
    return uninterrupted(cnn, tmp_path_factory.mktemp("callbacks-reference"), CALLBACKS)


def test_the_reference_run_exercises_both_callbacks(reference_run):
    """Guards the test below: without a halved rate and an early stop it would prove nothing."""
    from cnncli.train.rundir import read_history

    rates = [row["learning_rate"] for row in read_history(reference_run / "history.csv")]
    assert history_epochs(reference_run) == list(range(1, STOPPED_AFTER + 1))
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.005, 0.005, 0.0025])


def test_kills_with_early_stopping_and_reduce_on_plateau_resume_to_the_same_run(cnn, tmp_path, reference_run):
    (tmp_path / "cb.yaml").write_text(CALLBACKS)
    run_dir = None
    for fault, committed in KILLS:
        args = ("train", "--resume", run_dir) if run_dir else ("train", "cb.yaml", "-o", "runs")
        killed = cnn(*args, "-q", cwd=tmp_path, fault=fault)
        assert killed.code == -signal.SIGKILL, (fault, killed)
        run_dir = only_run_dir(tmp_path / "runs")
        assert check_intact(run_dir) == committed, fault
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed
    assert (run_dir / "history.csv").read_bytes() == (reference_run / "history.csv").read_bytes()
    for ours, theirs in zip(_weights(run_dir / "model.keras"), _weights(reference_run / "model.keras"), strict=True):
        np.testing.assert_array_equal(ours, theirs)  # epoch 4's weights, restored by EarlyStopping
    assert temporary_files(run_dir) == []
    # TensorBoard: every epoch's summaries exactly once, as in the uninterrupted run, though 4 processes wrote
    # them and one logged epoch 4 before it was lost.
    assert len(list((run_dir / "logs").rglob("events.out.tfevents.*"))) > 2
    assert _scalars(run_dir) == _scalars(reference_run)
