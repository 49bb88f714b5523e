"""The run directory: where every file of a run is written, always atomically.

Layout (product.md): config.yaml, run.json, history.csv, metrics.json,
model.keras, checkpoints/, curves.png, confusion_matrix.png, logs/ (TensorBoard).
A file is written beside its final name and renamed over it (fileio.py), so a
crash leaves either the old complete file or the new one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnncli import fileio
from cnncli.errors import CnnError, RunError

STATE_FILE = "checkpoints/state.json"


def check_output(root: Path, name: str) -> None:
    """Fail before any slow work (data, model) when no run directory can be made under `root`."""
    base = Path(root) / _safe_name(name)
    why = fileio.unwritable(base)
    if why:
        raise CnnError(f"cannot create `{base}`: {why}; choose another --output")


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


def write_checkpoint(checkpoint: Any, prefix: Path) -> None:
    """tf.train.Checkpoint.write, with TensorFlow's I/O errors (e.g. ResourceExhausted: disk full) as CnnError."""
    import tensorflow as tf

    with fileio.writing(prefix):
        try:
            checkpoint.write(str(prefix))
            for part in prefix.parent.glob(prefix.name + ".*"):  # TF does not fsync; state.json will name these
                fileio.fsync_file(part)
            fileio.fsync_dir(prefix.parent)
        except BaseException as exc:
            shutil.rmtree(f"{prefix}_temp", ignore_errors=True)  # TF's unmerged shards
            if isinstance(exc, tf.errors.OpError):  # "<file>; No space left on device [Op:SaveV2]": keep the reason
                reason = exc.message.split(" [Op:")[0].rsplit("; ", 1)[-1].strip()
                raise CnnError(f"cannot write `{prefix}`: {reason}") from None
            raise


def read_checkpoint(checkpoint: Any, prefix: Path) -> None:
    """Restore from `prefix` (named by state.json); a missing or damaged checkpoint is a RunError."""
    import tensorflow as tf

    try:
        checkpoint.read(str(prefix)).expect_partial()
    except (tf.errors.OpError, ValueError, OSError) as exc:
        reason = getattr(exc, "message", None) or str(exc)
        raise RunError(
            f"cannot restore the checkpoint `{prefix}` that state.json names: {reason.strip().splitlines()[0]}"
        ) from None


def read_json(path: Path) -> dict:
    """A run's JSON file, or a RunError saying it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunError(f"`{path}` is missing; is `{Path(path).parent}` a cnncli run directory?") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"`{path}` cannot be read: {exc}") from None


def write_history(path: Path, rows: list[dict], only_if_changed: bool = False) -> None:
    """history.csv: one row per epoch; columns in first-seen order. `only_if_changed` leaves a file
    that already holds these rows alone (its time too: a resume that fails changes nothing)."""
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
    text = buf.getvalue()
    if only_if_changed and Path(path).exists() and Path(path).read_text() == text:
        return
    fileio.write(path, text)


def _fmt(value):
    return repr(value) if isinstance(value, float) else value


def read_history(path: Path) -> list[dict]:
    """The rows of history.csv as dicts of numbers; none when the file does not exist."""
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


def save_model(model: Any, path: Path) -> None:
    """model.keras via a temporary file in the same directory, then rename."""
    with fileio.replacing(path, ".keras") as tmp:
        model.save(tmp)


def find_run_dir(path: str | Path) -> Path:
    """The run directory `path` names, or a RunError saying why it is not one."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"`{path}` is not a directory; give a run directory such as runs/<name>/<timestamp>")
    if not (path / "config.yaml").exists():
        if not any(path.iterdir()) or all(fileio.is_temp(p.name) for p in path.iterdir()):
            raise RunError(
                f"`{path}` is empty: its run stopped before it saved its config; start it again with cnn train CONFIG"
            )
        raise RunError(f"`{path}` has no config.yaml; {_what_it_holds(path)}")
    return path


def _what_it_holds(path: Path) -> str:
    """The run directories a folder without config.yaml leads to: a sweep's trials, or the runs of one name."""
    if (path / "trials.csv").exists() or (path / "study.db").exists():
        trials = (
            sorted(p.name for p in (path / "trials").iterdir() if (p / "config.yaml").exists())
            if (path / "trials").is_dir()
            else []
        )
        example = f", e.g. {path / 'trials' / trials[0]}" if trials else ""
        return f"it is a sweep directory (cnn tune): give one of its trials{example} (trials.csv has each one's metric)"
    runs = sorted(p for p in path.iterdir() if p.is_dir() and (p / "config.yaml").exists())
    if runs:
        return f"it holds {len(runs)} run(s); the latest is {runs[-1]}"
    return "is it a cnncli run directory?"


def no_world_writes() -> None:
    """Whatever the umask, nothing this process creates is group- or world-writable."""
    os.umask(os.umask(0o022) | 0o022)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold checkpoints/ exclusively, so that two processes never train one run at once.

    flock is released by the kernel when the process dies, kill -9 included: a
    crashed run is never left locked.
    """
    folder = Path(run_dir) / "checkpoints"
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise CnnError(f"cannot open `{folder}`: {exc.strerror or exc}") from None
    with fileio.locked(
        folder,
        busy=f"`{run_dir}` is being trained by another process; wait for it to finish or stop it before resuming",
    ):
        yield


_CHECKPOINT = re.compile(r"epoch-(\d+)(_temp|\.index|\.data-\d+-of-\d+|\.best_weights\.npz)$")


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
            temporary = fileio.is_temp(entry.name) or ".tempstate" in entry.name
            if temporary or (match and (match.group(2) == "_temp" or int(match.group(1)) > kept)):
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
    prune_checkpoints(run_dir)  # a crash between state.json and the pruning left one too many
    trim_event_files(run_dir / "logs", kept)
    if history:
        write_history(run_dir / "history.csv", history, only_if_changed=True)
    else:
        (run_dir / "history.csv").unlink(missing_ok=True)


def prune_checkpoints(run_dir: Path, keep: int = 2) -> None:
    """Delete all but the last `keep` epoch checkpoints (state.json names the last one)."""
    for old in sorted((Path(run_dir) / "checkpoints").glob("epoch-*.index"))[:-keep]:
        for part in old.parent.glob(old.name[: -len(".index")] + ".*"):
            part.unlink(missing_ok=True)


def trim_event_files(logs: Path, epochs: int) -> None:
    """Drop from TensorBoard's event files every summary of an epoch after the first `epochs`.

    The resumed run writes those epochs again into a new event file; without this
    TensorBoard would show the lost epoch twice. Keras logs epoch summaries at
    step = epoch index (0-based). Records are copied as they are (TFRecord framing:
    length, its CRC, data, its CRC), so nothing is re-encoded; a record cut short
    by a kill is dropped.
    """
    if not Path(logs).is_dir():
        return
    try:
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto.event_pb2 import Event
    except ImportError:  # no TensorBoard installed: nothing wrote these files
        return
    for path in sorted(Path(logs).rglob("events.out.tfevents.*")):
        raw = path.read_bytes()
        kept, offset, changed = [], 0, False
        while offset + 12 <= len(raw):
            length = int.from_bytes(raw[offset : offset + 8], "little")
            end = offset + 12 + length + 4
            if end > len(raw):
                break
            try:
                event = Event.FromString(raw[offset + 12 : offset + 12 + length])
            except DecodeError:  # a damaged record: keep what came before it
                break
            if event.HasField("summary") and event.step >= epochs:
                changed = True
            else:
                kept.append(raw[offset:end])
            offset = end
        if changed or offset != len(raw):
            fileio.write(path, b"".join(kept))
