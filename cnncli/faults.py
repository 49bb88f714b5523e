"""Fault injection for the crash tests (tests/faults/): stop the process at a named point.

A run directory must survive a crash between any two of its writes. To prove
it, the tests set `CNNCLI_FAULT` and the process stops itself exactly there:

    CNNCLI_FAULT=<point>[@<n>][:<action>][,<point>...]

`@n` picks the n-th time the process reaches the point (default 1). Actions:

    kill    SIGKILL (default): the process dies between two statements, as in a crash or an OOM kill
    term    SIGTERM, as `kill <pid>` or a batch scheduler would send
    int     SIGINT, as Ctrl-C
    stop    SIGSTOP: frozen until SIGCONT, so a test can change the world meanwhile (fill the disk)
    enospc  raise OSError(ENOSPC) at the point: a disk that has just filled up
    slow    sleep SLOW_SECONDS there, then go on: a request still in flight when the test acts

Points (grep for `faults.point` to see them in place):

    cli_start              `cnn` has started; not even its command-line parser is imported
    tensorflow_import      a command is about to import TensorFlow
    data_load              `cnn train` is about to load the data; no run directory yet

    run_dir_created        the run directory exists, nothing is in it yet
    config_written         config.yaml is in place, nothing trained
    epoch_trained          an epoch's steps are done, nothing of it is saved
    history_written        that epoch's row is in history.csv; no checkpoint yet
    checkpoint_written     its TF checkpoint is complete; state.json still names the previous one
    state_written          state.json names the new checkpoint; older ones not yet pruned
    training_done          every epoch is committed; nothing of the finish (model, metrics, plots) written
    model_saved            model.keras is in place; metrics.json not yet written
    metrics_written        metrics.json is in place; plots and run.json not yet
    export_written         `cnn export`: the artefact is written under a temporary name, not checked
    export_checked         the artefact passed its check; not yet renamed into place
    swapped:<name>         a folder (a SavedModel) has been swapped in; the old one not yet removed
    write:<file name>      a file's complete temporary copy is on disk, not yet renamed over
                           the file (history.csv, state.json, run.json, model.keras, ...)
    serve_batch            `cnn serve`: a batch of requests is about to run through the model

Unset, as in every real run, `point()` is a function call and one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "CNNCLI_FAULT"
ACTIONS = ("kill", "term", "int", "stop", "enospc", "slow")
SLOW_SECONDS = 3  # long enough for a test to send a signal while the request waits

_plan: dict[str, tuple[int, str]] | None = None  # point -> (n-th arrival, action); None until first read
_seen: dict[str, int] = {}


def _read_plan() -> dict[str, tuple[int, str]]:
    plan = {}
    for item in filter(None, (part.strip() for part in os.environ.get(ENV, "").split(","))):
        head, sep, tail = item.rpartition(":")
        where, action = (head, tail) if sep and tail in ACTIONS else (item, "kill")
        name, _, count = where.partition("@")
        plan[name] = (int(count or 1), action)
    return plan


def point(name: str) -> None:
    """Mark a place where a crash must be survivable; acts only when CNNCLI_FAULT names it."""
    global _plan
    if _plan is None:
        _plan = _read_plan()  # {} in every real run
    if name not in _plan:
        return
    _seen[name] = _seen.get(name, 0) + 1
    count, action = _plan[name]
    if _seen[name] != count:
        return
    if action == "enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    if action == "slow":
        time.sleep(SLOW_SECONDS)
        return
    signals = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT, "stop": signal.SIGSTOP}
    os.kill(os.getpid(), signals[action])
    if action != "stop":
        time.sleep(1)  # SIGKILL never returns; SIGTERM's and SIGINT's handlers raise during this sleep


def reset() -> None:
    """Forget the plan and the counts (a forked test child reads its own CNNCLI_FAULT)."""
    global _plan
    _plan = None
    _seen.clear()
