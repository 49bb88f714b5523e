"""kill -9 during `cnn export`: the artefact and export.json are each the old or the new complete file.

A first export succeeds; then re-exports into the same place (--force) are killed at
each step (artefact written but unchecked, checked but not renamed, renamed
but export.json not updated, and for a SavedModel directory, mid-swap), and a
last re-export must succeed over whatever the kills left.
"""

from __future__ import annotations

import json
import signal
import zipfile
from pathlib import Path

import pytest

# (CNNCLI_FAULT, whether the new artefact is in place after the kill)
KILLS = [
    ("export_written", False),  # written under a temporary name, not yet checked
    ("export_checked", False),  # checked, not yet renamed into place
    ("write:export.json", True),  # renamed into place; export.json's new copy not yet renamed
]


def _hidden(folder: Path) -> list[str]:
    """The hidden temporary artefacts beside the exported one."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _keras_ok(path: Path) -> None:
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert "model.weights.h5" in zf.namelist()


def _saved_model_ok(path: Path) -> None:
    assert (path / "saved_model.pb").stat().st_size > 0, sorted(p.name for p in path.parent.iterdir())
    assert list((path / "variables").glob("variables.data-*")), sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("fmt, name, check", [("keras", "model.keras", _keras_ok)])
def test_kill_during_export(cnn, reference, tmp_path, fmt, name, check):
    artefact = tmp_path / name
    first = cnn("export", reference, "--format", fmt, "--output", artefact, cwd=tmp_path)
    assert first.code == 0, first
    old, old_record = artefact.read_bytes(), (tmp_path / "export.json").read_bytes()
    for fault, replaced in KILLS:
        killed = cnn("export", reference, "--format", fmt, "--output", artefact, "--force", cwd=tmp_path,
                     fault=fault)
        assert killed.code == -signal.SIGKILL, (fault, killed)
        check(artefact)
        if not replaced:
            assert artefact.read_bytes() == old, fault
        assert (tmp_path / "export.json").read_bytes() == old_record, fault  # the old, complete record
        old = artefact.read_bytes()
    assert _hidden(tmp_path)  # the kills left temporary copies ...
    again = cnn("export", reference, "--format", fmt, "--output", artefact, "--force", cwd=tmp_path)
    assert again.code == 0, again
    assert _hidden(tmp_path) == []  # ... which the next export removed
    check(artefact)
    record = json.loads((tmp_path / "export.json").read_text())["artifacts"][name]
    assert record["check"]["passed"] and record["size_bytes"] == artefact.stat().st_size


def test_kill_while_a_saved_model_directory_is_replaced(cnn, reference, tmp_path):
    """A SavedModel is a directory: replacing one must never leave the path missing."""
    artefact = tmp_path / "saved_model"
    first = cnn("export", reference, "--format", "saved_model", "--output", artefact, cwd=tmp_path)
    assert first.code == 0, first
    killed = cnn("export", reference, "--format", "saved_model", "--output", artefact, "--force", cwd=tmp_path,
                 fault="swapped:saved_model")
    assert killed.code == -signal.SIGKILL, killed
    _saved_model_ok(artefact)
    assert len(_hidden(tmp_path)) == 1, _hidden(tmp_path)  # the old SavedModel, under its temporary name
    again = cnn("export", reference, "--format", "saved_model", "--output", artefact, "--force",
                cwd=tmp_path)
    assert again.code == 0, again
    _saved_model_ok(artefact)
    assert _hidden(tmp_path) == []
