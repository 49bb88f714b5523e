"""The run directory: where every file of a run is written, always atomically.

Layout (product.md): config.yaml, run.json, history.csv, metrics.json,
model.keras, checkpoints/, curves.png, confusion_matrix.png, logs/ (TensorBoard).
A file is written beside its final name and renamed over it, so a crash
leaves either the old complete file or the new one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

from cnncli.errors import CnnError, RunError

STATE_FILE = "checkpoints/state.json"


def _check_writable(path: Path) -> None:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("/"))
    if not os.access(probe, os.W_OK):
        raise CnnError(f"cannot write to `{probe}`: permission denied; choose another --output")


def create_run_dir(root: Path, name: str) -> Path:
    """runs/<name>/<timestamp>/, never an existing one: mkdir is the lock between racing jobs."""
    base = Path(root) / _safe_name(name)
    _check_writable(base)
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
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None


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
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None


def find_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"`{path}` is not a directory; give a run directory such as runs/<name>/<timestamp>")
    if not (path / "config.yaml").exists():
        raise RunError(f"`{path}` has no config.yaml; is it a cnncli run directory?")
    return path
