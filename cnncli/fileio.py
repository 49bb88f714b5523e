"""The one way cnncli writes a file, names a temporary file, and locks a folder.

Every file (run directory, export artefacts, plots, export.json) is written
under a temporary name beside its final one and renamed over it, so a crash
leaves the old complete file or the new one, never a half-written one. All
temporary names follow one scheme, `.<name>.tmp-<pid>-<random><suffix>`, so the
crash clean-up before a resume (rundir.py's `reconcile`) finds every one
of them with `is_temp`.

Locks are flock(2) on a folder itself: the kernel drops them when the process
dies, kill -9 included, and there is no lock file to leave behind or race over.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cnncli import faults
from cnncli.errors import CnnError, RunError

TEMP_MARK = ".tmp-"


def absolute(path: str | Path) -> str:
    """A path as cnncli names it in a JSON document: absolute, so a script need not know the working
    directory or the folder a listing is relative to; a URL (gs://…) as given."""
    return str(path) if "://" in str(path) else os.path.abspath(path)


def temp_path(path: Path, suffix: str = "") -> Path:
    """A fresh temporary name beside `path` (hidden, this process's, unique); `suffix` keeps a writer's
    extension, e.g. `.keras` for model.save, which picks the format from it."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def is_temp(name: str) -> bool:
    """Whether a file name is one of `temp_path`'s: a leftover of a write that did not finish."""
    return name.startswith(".") and TEMP_MARK in name


def remove_stale_temps(path: Path) -> None:
    """Remove the temporary copies of `path` (files or folders) that processes no longer running left
    beside it, e.g. a killed export's artefact; a live concurrent writer's stay."""
    path = Path(path)
    prefix = f".{path.name}{TEMP_MARK}"
    for entry in path.parent.glob(f".{glob.escape(path.name)}{TEMP_MARK}*"):
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            remove(entry)


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process writes nothing under that name yet
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def replacing(path: Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a path (model.save, savefig, an exporter); when
    the block ends normally, that file or folder replaces `path` in one step. On any failure (an
    interrupt too) the temporary copy is removed and `path` is untouched; an OSError becomes a
    CnnError naming `path`."""
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        if tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        faults.point(f"write:{path.name}")
        _move_into_place(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut, not only a killed process
    except BaseException as exc:
        remove(tmp)
        if isinstance(exc, OSError):
            raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}") from None
        raise


def write(path: Path, data: bytes | str) -> None:
    """`path` holds `data` (text is written as UTF-8), or, after any failure, what it held before."""
    with replacing(path) as tmp, open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON to `path`, atomically."""
    write(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "item"):  # numpy and TF scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def unwritable(folder: Path) -> str | None:
    """Why no file can be created in `folder` (or in the folders that would be made for it), or None.

    For checks before slow work; root bypasses permission bits, so a read-only file system is
    checked on its own. What this cannot foresee (a full disk) still fails at the write, in `writing`.
    """
    folder = Path(folder)
    probe = next((p for p in (folder, *folder.parents) if p.exists()), Path("/"))
    if not probe.is_dir():
        return f"`{probe}` is a file, not a folder"
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"`{probe}` is on a read-only file system"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"`{probe}` is not writable (permission denied)"
    return None


@contextlib.contextmanager
def writing(path: Path, hint: str = "") -> Iterator[None]:
    """Turn a failure to write `path` (disk full, read-only, gone) into one error line naming it."""
    try:
        yield
    except OSError as exc:
        raise CnnError(f"cannot write `{path}`: {exc.strerror or exc}{hint}") from None


def _move_into_place(tmp: Path, path: Path) -> None:
    """A file is renamed over `path`. A folder (a SavedModel) cannot be renamed over a non-empty one:
    it is swapped with the old one in one step where Linux can, so a crash leaves the old or the new,
    never none; elsewhere two renames, the old one first moved to a temporary name."""
    if not (tmp.is_dir() and path.exists()):
        os.replace(tmp, path)
        return
    if exchange(tmp, path):
        faults.point(f"swapped:{path.name}")
        remove(tmp)  # the old one, now under the temporary name
        return
    old = temp_path(path, ".old")
    os.replace(path, old)
    faults.point(f"swapped:{path.name}")
    os.replace(tmp, path)
    remove(old)


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel or libc cannot."""
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


def remove(path: Path) -> None:
    """Delete a file or a folder if it is there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_dir(folder: Path) -> None:
    """Make the folder's entries (a rename into it) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Make the file's bytes durable."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def locked(folder: Path, busy: str | None = None) -> Iterator[None]:
    """Hold an exclusive flock on `folder` for the block.

    `busy=None` waits for the holder; otherwise a folder another process holds
    raises RunError(busy) at once.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        raise CnnError(f"cannot open `{folder}`: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (fcntl.LOCK_NB if busy is not None else 0))
        except BlockingIOError:
            raise RunError(busy) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


SIGNATURES = (  # a file's first bytes -> what it is, for messages about a file that is not what its name says
    (b"PK\x03\x04", "a zip archive"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (the legacy Keras .h5 format)"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"\x1f\x8b", "a gzip file"),
    (b"%PDF", "a PDF document"),
)


def looks_like(path: Path) -> str:
    """What a file looks like from its first bytes: `an empty file`, `a PNG image`, `a text file starting
    `hello``, `binary data`."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        return f"a file that cannot be read ({exc.strerror or exc})"
    if not head:
        return "an empty file"
    for magic, kind in SIGNATURES:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model (name it .tflite)"
    text = head.decode("utf-8", errors="replace")
    if "\x00" in text or "\ufffd" in text[:-3]:  # the last character may be cut in two by the 512 bytes
        return "binary data"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"a text file starting `{first[:40]}`" if first else "a text file of blank lines"
