"""The run directory: where every file of a run is written, always atomically.

Layout (product.md): config.yaml, run.json, history.csv, metrics.json,
model.keras, checkpoints/, curves.png, confusion_matrix.png, logs/ (TensorBoard).
A file is written beside its final name and renamed over it, so a crash
leaves either the old complete file or the new one.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

from cnncli import faults
from cnncli.errors import CnnError, RunError

STATE_FILE = "checkpoints/state.json"


def check_output(root: Path, name: str) -> None:
    """Fail before any slow work (data, model) when no run directory can be made under `root`.

    Root bypasses permission bits, so a read-only file system is checked on its own.
    """
    base = Path(root) / _safe_name(name)
    probe = next((p for p in (base, *base.parents) if p.exists()), Path("/"))
    if not probe.is_dir():
        raise CnnError(f"cannot create `{base}`: `{probe}` is a file, not a folder; choose another --output")
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        raise CnnError(f"cannot create `{base}`: `{probe}` is on a read-only file system; choose another --output")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CnnError(f"cannot create `{base}`: `{probe}` is not writable (permission denied); "
                       "choose another --output")


def create_run_dir(root: Path, name: str, exactly: Path | None = None) -> Path:
    """runs/<name>/<timestamp>/ (or `exactly`), never an existing one: mkdir is the lock between racing jobs."""
    if exactly is not None:
        try:
            Path(exactly).mkdir(parents=True, mode=0o755)
            return Path(exactly)
        except OSError as exc:
            raise CnnError(f"cannot create `{exactly}`: {exc.strerror}") from None
    base = Path(root) / _safe_name(name)
    check_output(root, name)
    try:
        base.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise CnnError(f"cannot create `{base}`: {exc.strerror}") from None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = base / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir(mode=0o755)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise CnnError(f"cannot create `{path}`: {exc.strerror}") from None
    raise CnnError(f"too many runs named `{name}` started in the same second under {base}")


def _safe_name(name: str) -> str:
    """A run name is one path component: no separators, no leading dots."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-") or "run"
    return cleaned[:100]


def atomic_write(path: Path, data: bytes | str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    raw = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a power cut, not only a killed process
    except BaseException as exc:  # an interrupt too: no temporary file is left behind
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None
        raise


@contextlib.contextmanager
def writing(path: Path, hint: str = ""):
    """Turn a failure to write `path` (disk full, read-only, gone) into one error line naming it."""
    try:
        yield
    except OSError as exc:
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}{hint}") from None


def write_checkpoint(checkpoint, prefix: Path) -> None:
    """tf.train.Checkpoint.write, with TensorFlow's I/O errors (e.g. ResourceExhausted: disk full) as CnnError."""
    import tensorflow as tf

    with writing(prefix):
        try:
            checkpoint.write(str(prefix))
            for part in prefix.parent.glob(prefix.name + ".*"):  # TF does not fsync; state.json will name these
                with open(part, "rb") as f:
                    os.fsync(f.fileno())
            _fsync_dir(prefix.parent)
        except BaseException as exc:
            shutil.rmtree(f"{prefix}_temp", ignore_errors=True)  # TF's unmerged shards
            if isinstance(exc, tf.errors.OpError):  # "<file>; No space left on device [Op:SaveV2]": keep the reason
                reason = exc.message.split(" [Op:")[0].rsplit("; ", 1)[-1].strip()
                raise CnnError(f"cannot write `{prefix}`: {reason}") from None
            raise


def read_checkpoint(checkpoint, prefix: Path) -> None:
    """Restore from `prefix` (named by state.json); a missing or damaged checkpoint is a RunError."""
    import tensorflow as tf

    try:
        checkpoint.read(str(prefix)).expect_partial()
    except (tf.errors.OpError, ValueError, OSError) as exc:
        reason = getattr(exc, "message", None) or str(exc)
        raise RunError(f"cannot restore the checkpoint `{prefix}` that state.json names: "
                       f"{reason.strip().splitlines()[0]}") from None


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel or libc cannot.

    A directory (a SavedModel) cannot be renamed over a non-empty one; two renames
    would leave a moment with neither. Swapping leaves `b` the old or the new, never missing.
    """
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not glibc >= 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a file system without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"`{path}` is missing; is `{Path(path).parent}` a cnncli run directory?") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"`{path}` cannot be read: {exc}") from None


def write_history(path: Path, rows: list[dict]) -> None:
    """history.csv: one row per epoch; columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write(path, buf.getvalue())


def _fmt(value):
    return repr(value) if isinstance(value, float) else value


def read_history(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def save_model(model, path: Path) -> None:
    """model.keras via a temporary file in the same directory, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None
        raise


def find_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"`{path}` is not a directory; give a run directory such as runs/<name>/<timestamp>")
    if not (path / "config.yaml").exists():
        if not any(path.iterdir()) or all(p.name.startswith(".config.yaml.tmp-") for p in path.iterdir()):
            raise RunError(f"`{path}` is empty: its run stopped before it saved its config; "
                           "start it again with cnn train CONFIG")
        raise RunError(f"`{path}` has no config.yaml; is it a cnncli run directory?")
    return path


def no_world_writes() -> None:
    """Whatever the umask, nothing this process creates is group- or world-writable."""
    os.umask(os.umask(0o022) | 0o022)


@contextlib.contextmanager
def locked(run_dir: Path):
    """Hold checkpoints/ exclusively, so that two processes never train one run at once.

    flock is released by the kernel when the process dies, kill -9 included: a
    crashed run is never left locked.
    """
    folder = Path(run_dir) / "checkpoints"
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise CnnError(f"cannot open `{folder}`: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"`{run_dir}` is being trained by another process; wait for it to finish "
                           "or stop it before resuming") from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


_CHECKPOINT = re.compile(r"epoch-(\d+)(_temp|\.index|\.data-\d+-of-\d+)$")


def reconcile(run_dir: Path, state: dict | None) -> None:
    """Before resuming: make the files agree with state.json, the run's commit record.

    A process killed mid-epoch may have left a history row, a checkpoint or a
    half-merged checkpoint folder for an epoch that state.json does not name,
    and temporary copies of files it was replacing. The epoch will be trained
    again, so these go; everything state.json names stays.
    """
    run_dir = Path(run_dir)
    history = state["history"] if state else []
    kept = len(history)  # epochs committed; checkpoints are numbered by epoch
    for folder in (run_dir, run_dir / "checkpoints"):
        for entry in folder.iterdir() if folder.is_dir() else ():
            match = _CHECKPOINT.match(entry.name)
            temporary = (entry.name.startswith(".") and ".tmp-" in entry.name) or ".tempstate" in entry.name
            if temporary or (match and (match.group(2) == "_temp" or int(match.group(1)) > kept)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    prune_checkpoints(run_dir)  # a crash between state.json and the pruning left one too many
    if history:
        write_history(run_dir / "history.csv", history)
    else:
        (run_dir / "history.csv").unlink(missing_ok=True)


def prune_checkpoints(run_dir: Path, keep: int = 2) -> None:
    """Delete all but the last `keep` epoch checkpoints (state.json names the last one)."""
    for old in sorted((Path(run_dir) / "checkpoints").glob("epoch-*.index"))[:-keep]:
        for part in old.parent.glob(old.name[:-len(".index")] + ".*"):
            part.unlink(missing_ok=True)
