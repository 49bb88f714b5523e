"""SIGTERM and SIGINT stop a run cleanly: exit 130, a resume hint, no temporary files, resumable.

Signals are sent by the process to itself at chosen points (CNNCLI_FAULT with
the `term` / `int` actions: between an epoch's writes, with a temporary copy on
disk, while the model is saved) and once from outside, to a run that froze
itself at a chosen point (the `stop` action), so that no race decides the test.
"""

from __future__ import annotations

import json
import signal

from conftest import EPOCHS
from harness import check_complete, check_intact, history_rows, only_run_dir, temporary_files


def _assert_clean_stop(done, run_dir, shown) -> int:
    assert done.code == 130, done
    assert done.stderr == ("Error: stopped; the run is resumable from its last completed epoch: "
                           f"cnn train --resume {shown}\n"), done.stderr
    assert temporary_files(run_dir) == []  # an interrupted write removes its temporary copy
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"
    return check_intact(run_dir)


def test_sigterm_and_sigint_stop_cleanly_and_the_run_resumes(cnn, tiny, reference):
    out = tiny.parent
    # Ctrl-C between epoch 1's history row and its checkpoint.
    done = cnn("train", tiny, "-o", "runs", "-q", cwd=out, fault="history_written@1:int")
    run_dir = only_run_dir(out / "runs")
    assert _assert_clean_stop(done, run_dir, shown=run_dir.relative_to(out)) == 0

    # SIGTERM with state.json's new copy on disk, not yet renamed over the old one.
    done = cnn("train", "--resume", run_dir, "-q", cwd=out, fault="write:state.json@1:term")
    assert _assert_clean_stop(done, run_dir, shown=run_dir) == 0

    # SIGTERM from outside, as `kill PID` or a scheduler's pre-emption, once an epoch is committed: the run
    # freezes itself there (SIGSTOP), receives SIGTERM, and handles it when it continues.
    child = cnn.start("train", "--resume", run_dir, "-q", cwd=out, fault="state_written@1:stop")
    child.wait_until_stopped()
    child.signal(signal.SIGTERM)
    child.signal(signal.SIGCONT)
    assert _assert_clean_stop(child.wait(), run_dir, shown=run_dir) == 1

    # Ctrl-C after model.keras is written, before metrics.json.
    done = cnn("train", "--resume", run_dir, "-q", cwd=out, fault="model_saved:int")
    assert _assert_clean_stop(done, run_dir, shown=run_dir) == EPOCHS

    resumed = cnn("train", "--resume", run_dir, "-q", cwd=out)
    assert resumed.code == 0, resumed
    check_complete(run_dir, EPOCHS)
    assert history_rows(run_dir) == history_rows(reference)
