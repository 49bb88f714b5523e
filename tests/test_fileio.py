"""cnncli/fileio.py: one atomic write, one temporary-name scheme, one lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cnncli import faults, fileio
from cnncli.errors import CnnError
from cnncli.train import rundir


@pytest.fixture
def fault(monkeypatch):
    def plan(spec: str) -> None:
        monkeypatch.setenv(faults.ENV, spec)
        faults.reset()

    yield plan
    faults.reset()


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"),
               min_size=1, max_size=40), st.sampled_from(["", ".keras", ".png", ".tflite", ".old"]))
def test_every_temporary_name_is_recognised(name, suffix):
    tmp = fileio.temp_path(Path("/x") / name, suffix)
    assert tmp.parent == Path("/x")
    assert fileio.is_temp(tmp.name)
    assert tmp.name.endswith(suffix)


def test_final_names_are_not_temporary():
    for name in ("history.csv", "model.keras", "curves.png", ".hidden", "a.tmp-1", "epoch-0001.index"):
        assert not fileio.is_temp(name)


def test_write_replaces_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "run.json"
    fileio.write_json(path, {"a": 1})
    fileio.write_json(path, {"a": 2, "n": __import__("numpy").float32(0.5)})
    assert json.loads(path.read_text()) == {"a": 2, "n": 0.5}
    assert os.listdir(tmp_path) == ["run.json"]


def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, fault):
    path = tmp_path / "state.json"
    fileio.write(path, "old")
    fault("write:state.json:enospc")  # the new copy is on disk, then the disk fills before the rename
    with pytest.raises(CnnError, match=r"cannot write `.*state.json`: No space left on device"):
        fileio.write(path, b"new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.json"]


def test_replacing_gives_writers_a_path_and_cleans_up_after_them(tmp_path):
    path = tmp_path / "model.keras"
    with fileio.replacing(path, ".keras") as tmp:
        assert tmp.suffix == ".keras" and tmp.parent == tmp_path and fileio.is_temp(tmp.name)
        tmp.write_bytes(b"new model")
    assert path.read_bytes() == b"new model"
    with pytest.raises(KeyboardInterrupt), fileio.replacing(path, ".keras") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"new model"
    assert os.listdir(tmp_path) == ["model.keras"]


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "two-renames"])
def test_a_folder_replaces_a_folder(tmp_path, monkeypatch, swap):
    if not swap:  # a kernel or file system without RENAME_EXCHANGE
        monkeypatch.setattr(fileio, "exchange", lambda a, b: False)
    path = tmp_path / "saved_model"
    path.mkdir()
    (path / "old.pb").write_text("old")
    with fileio.replacing(path) as tmp:
        tmp.mkdir()
        (tmp / "saved_model.pb").write_text("new")
    assert sorted(os.listdir(path)) == ["saved_model.pb"]
    assert os.listdir(tmp_path) == ["saved_model"]


def test_crash_clean_up_finds_plot_and_model_temporaries(tmp_path):
    """What a killed process leaves behind (a PNG, a model, a JSON half-way) goes before a resume."""
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    leftovers = [fileio.temp_path(run_dir / "curves.png", ".png"), fileio.temp_path(run_dir / "model.keras", ".keras"),
                 fileio.temp_path(run_dir / "run.json"),
                 fileio.temp_path(run_dir / "checkpoints" / "best.keras", ".keras")]
    for path in leftovers:
        path.write_bytes(b"partial")
    (run_dir / "curves.png").write_bytes(b"whole")
    rundir.reconcile(run_dir, None)
    assert sorted(p.name for p in run_dir.rglob("*")) == ["checkpoints", "curves.png"]


SECOND_HOLDER = """
import sys
from cnncli import fileio
from cnncli.errors import RunError
try:
    with fileio.locked(sys.argv[1], busy="taken"):
        sys.exit(0)
except RunError as exc:
    print(exc)
    sys.exit(3)
"""


def test_lock_refuses_a_second_holder(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    second = [sys.executable, "-c", SECOND_HOLDER, str(tmp_path)]
    with fileio.locked(tmp_path, busy="taken"):
        held = subprocess.run(second, capture_output=True, text=True, env=env)
    assert (held.returncode, held.stdout.strip()) == (3, "taken")
    assert subprocess.run(second, env=env).returncode == 0  # released when the block ended


def test_lock_on_a_missing_folder_is_one_error_line(tmp_path):
    with pytest.raises(CnnError, match=r"cannot open `.*gone`: No such file or directory"):
        with fileio.locked(tmp_path / "gone"):
            pass
