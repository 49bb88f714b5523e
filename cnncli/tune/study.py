"""Sharing one Optuna study between processes: the sweep lock, the trial budget, dead trials, heartbeats.

Asking for a trial and counting the ones that are done happen under one file
lock in the sweep directory, so no trial beyond the requested number starts.
Each process holds a lock file of its own in .workers/ for as long as it
lives; a RUNNING trial whose owner's lock file can be taken belongs to a dead
process (kill -9 included: the kernel releases the lock). Trials run on other
machines are judged by Optuna's heartbeat instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HEARTBEAT_SECONDS = 30  # other machines' dead trials are failed after GRACE_SECONDS without a beat
GRACE_SECONDS = 120
SQLITE_TIMEOUT = 60  # seconds a process waits for another's write to the shared study.db


_held: list = []  # open descriptors of this process's owner locks; the kernel drops them at exit


def hold(path: Path) -> None:
    """Take an exclusive lock on `path` and keep it until this process exits."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    _held.append(fd)


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path) -> Iterator[None]:
    """The sweep directory's one lock: asking for a trial and counting trials happen under it."""
    fd = os.open(Path(sweep_dir) / ".sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def retry_once(study: Any, trial: Any) -> None:
    """A trial failed for its process's death (not its values) runs again, once, with the same values."""
    if "retry_of" not in trial.user_attrs and trial.params:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def counted(trial: Any) -> bool:
    """Finished trials that count towards the requested number: not those that died mid-way."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )


def _owner_alive(trial, sweep_dir: Path) -> bool | None:
    """Whether the process running `trial` lives: None when it ran on another machine (heartbeat decides)."""
    path = sweep_dir / ".workers" / trial.user_attrs.get("owner", "")
    if not trial.user_attrs.get("owner") or not path.exists():
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def reap(sweep: Any) -> None:
    """Fail (and retry once) the RUNNING trials whose process has died."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(sweep.study)  # other machines: no heartbeat for GRACE_SECONDS
    for trial in sweep.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _owner_alive(trial, sweep.dir) is False:
            sweep.study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            retry_once(sweep.study, trial)
            with contextlib.suppress(OSError):
                (sweep.dir / ".workers" / trial.user_attrs["owner"]).unlink()


def next_trial(sweep: Any) -> Any:
    """A new trial, or None when the finished and running ones already make the requested number."""
    from optuna.trial import TrialState

    with sweep_lock(sweep.dir):
        reap(sweep)
        trials = sweep.study.get_trials(deepcopy=False)
        taken = sum(counted(t) or t.state == TrialState.RUNNING for t in trials)
        if taken >= sweep.n_trials:
            return None
        trial = sweep.study.ask()
        storage: Any = sweep.study._storage  # an RDBStorage: it keeps heartbeats, which BaseStorage does not declare
        storage.record_heartbeat(trial._trial_id)  # from its first moment, as Study.optimize does
        trial.set_user_attr("owner", sweep.owner.name)
        trial.set_user_attr("host", platform.node())
        trial.set_user_attr("run_dir", f"trials/{trial.number:04d}")
    if _surplus(sweep, trial):
        return next_trial(sweep)  # the study is full now: this call finds so and returns None
    return trial


def _surplus(sweep, trial) -> bool:
    """Processes on other machines count and ask under their own locks, so two may ask for the last trial at
    once; the later-numbered one is ended at once, marked, and never counted or run."""
    from optuna.trial import TrialState

    earlier = sum(
        counted(t) or t.state == TrialState.RUNNING
        for t in sweep.study.get_trials(deepcopy=False)
        if t.number < trial.number
    )
    if earlier < sweep.n_trials:
        return False
    trial.set_user_attr("surplus", sweep.n_trials)
    sweep.study.tell(trial, state=TrialState.FAIL)
    return True


class Heartbeat:
    """Records the trial's heartbeat while it trains, so other machines can tell it lives."""

    def __init__(self, study, trial):
        self.storage, self.trial_id = study._storage, trial._trial_id  # Optuna's own optimize loop does this
        self.stop = threading.Event()

    def _beat(self):
        while not self.stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat is harmless; the next one may succeed
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self):
        with contextlib.suppress(Exception):
            self.storage.record_heartbeat(self.trial_id)
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        return False
