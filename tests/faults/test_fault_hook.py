"""The fault hook itself: unset it does nothing; set it acts at the n-th arrival only."""

from __future__ import annotations

import errno

import pytest

from cnncli import faults


@pytest.fixture(autouse=True)
def _fresh_plan():
    faults.reset()
    yield
    faults.reset()


def test_unset_is_a_no_op(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    for _ in range(3):
        faults.point("history_written")
    assert faults._plan == {}


def test_plan_syntax(monkeypatch):
    monkeypatch.setenv(faults.ENV, "write:state.json@2:term, epoch_trained ,history_written@3:enospc")
    assert faults._read_plan() == {"write:state.json": (2, "term"), "epoch_trained": (1, "kill"),
                                   "history_written": (3, "enospc")}


def test_acts_at_the_nth_arrival_only(monkeypatch):
    monkeypatch.setenv(faults.ENV, "write:history.csv@2:enospc")
    faults.point("write:history.csv")
    faults.point("write:state.json")
    with pytest.raises(OSError) as raised:
        faults.point("write:history.csv")
    assert raised.value.errno == errno.ENOSPC
    faults.point("write:history.csv")  # the third arrival passes again
