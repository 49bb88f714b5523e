"""A full disk or an output that cannot be written: exit 1 naming the path; nothing written before is damaged.

Where the test may mount (root with CAP_SYS_ADMIN), the run writes to a 16 MB
tmpfs that the test fills to the last page while the process is frozen at a
chosen point (CNNCLI_FAULT `stop`), so the next real write fails with ENOSPC.
Elsewhere the same point injects OSError(ENOSPC) into that write instead.
Every file on disk at the freeze must be byte-identical after the failure, and
the run must resume to the end once space is back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import EPOCHS
from harness import check_complete, check_intact, history_rows, only_run_dir

MERGE = "tensorflow.python.ops.gen_io_ops:merge_v2_checkpoints"
SAVEFIG = "matplotlib.figure:Figure.savefig"

# (freeze point, the same failure injected where no tmpfs can be mounted, functions to wrap,
#  the file that cannot be written, epochs committed after the failure)
FULL_AT = [
    ("epoch_trained@2", "write:history.csv@2:enospc", None, "history.csv", 1),
    ("history_written@1", "checkpoint_merge@1:enospc", {MERGE: "checkpoint_merge"}, "checkpoints/epoch-0002", 1),
    ("training_done", "write:model.keras:enospc", None, "model.keras", EPOCHS),
    ("metrics_written", "savefig:enospc", {SAVEFIG: "savefig"}, "curves.png", EPOCHS),
]


def _mount_tmpfs(where: Path, options: str) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


@pytest.fixture
def disk(tmp_path):
    """A small tmpfs to fill up, or None where mounting is not permitted."""
    where = tmp_path / "disk"
    if not _mount_tmpfs(where, "size=16m,mode=0755"):
        yield None
        return
    try:
        yield where
    finally:
        _umount(where)


def _fill(disk: Path) -> Path:
    """Write a file until not one more page fits."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


def _assert_untouched(run_dir: Path, before: dict[str, bytes]) -> None:
    """The same files with the same bytes; TensorBoard's event logs may only have grown at their end."""
    after = _snapshot(run_dir)
    logs = {name for name in before if name.startswith("logs/")}
    assert sorted(set(after) - set(before)) == [] and sorted(set(before) - set(after)) == []
    for name, data in before.items():
        if name in logs:
            assert after[name].startswith(data), f"{name} was rewritten, not appended to"
        else:
            assert hashlib.sha256(after[name]).digest() == hashlib.sha256(data).digest(), f"{name} changed"


def test_disk_full_at_each_writer_then_resume(cnn, tiny, reference, disk, tmp_path):
    output = (disk or tmp_path) / "runs"
    run_dir = None
    for freeze, injected, wrap, target, committed in FULL_AT:
        args = ("train", "--resume", run_dir) if run_dir else ("train", tiny, "-o", output)
        fault = f"{freeze}:stop" if disk else f"{freeze}:stop,{injected}"
        child = cnn.start(*args, "-q", cwd=tmp_path, fault=fault, wrap=None if disk else wrap)
        child.wait_until_stopped()
        run_dir = only_run_dir(output)
        before = _snapshot(run_dir)
        filler = _fill(disk) if disk else None
        child.signal(signal.SIGCONT)
        done = child.wait()
        assert done.code == 1, (freeze, done)
        assert done.stderr == f"Error: cannot write `{run_dir / target}`: No space left on device\n", done.stderr
        _assert_untouched(run_dir, before)  # nothing already written was touched, nothing half-written left
        assert check_intact(run_dir) == committed
        if filler:
            filler.unlink()
    resumed = cnn("train", "--resume", run_dir, "-q", cwd=tmp_path)
    assert resumed.code == 0, resumed
    check_complete(run_dir, EPOCHS)
    assert history_rows(run_dir) == history_rows(reference)


def _unwritable(tmp_path: Path) -> tuple[Path, str] | None:
    """A folder this process cannot write in, and why: read-only mount as root, mode 0555 otherwise."""
    where = tmp_path / "locked"
    if os.geteuid() == 0:
        if not _mount_tmpfs(where, "ro,size=1m"):
            return None
        return where, "is on a read-only file system"
    where.mkdir()
    where.chmod(0o555)
    return where, "is not writable (permission denied)"


def test_unwritable_output_is_one_error_naming_it(cnn, tiny, tmp_path):
    found = _unwritable(tmp_path)
    if found is None:
        pytest.skip("root without permission to mount: no way to make a folder root cannot write")
    where, why = found
    try:
        done = cnn("train", tiny, "-o", where / "runs", "-q", cwd=tmp_path)
    finally:
        if os.geteuid() == 0:
            _umount(where)
    assert done.code == 1, done
    assert done.stderr == (f"Error: cannot create `{where / 'runs' / 'tiny'}`: `{where}` {why}; "
                           "choose another --output\n")


def test_output_below_a_file_is_one_error_naming_it(cnn, tiny, tmp_path):
    (tmp_path / "notes.txt").write_text("not a folder")
    done = cnn("train", tiny, "-o", tmp_path / "notes.txt" / "runs", "-q", cwd=tmp_path)
    assert done.code == 1, done
    assert done.stderr == (f"Error: cannot create `{tmp_path / 'notes.txt' / 'runs' / 'tiny'}`: "
                           f"`{tmp_path / 'notes.txt'}` is a file, not a folder; choose another --output\n")
    assert (tmp_path / "notes.txt").read_text() == "not a folder"
