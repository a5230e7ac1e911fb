"""Atomic file and folder writes: everything vxl-jax saves (memory and session files, converted folders, training
exports, evaluation results, summaries and heatmaps) goes through here. Standard library only.

A file is written under a temporary name in its own directory (``.NAME.PID.tmp``), flushed and fsynced, then
renamed over ``NAME``; a folder is filled under ``.NAME.PID.tmp-XXXX`` and renamed at the end. A crash, SIGKILL,
full disk or file-size limit midway leaves the previous file (or nothing), never a half-written one; a failed
write removes its temporary and raises :class:`WriteError` with one line. Temporaries left by a killed process
(its pid no longer alive) are removed by the next write to the same name.

:func:`check_target` checks a destination before any work is done (a missing parent folder is refused, never
created silently; a path that is a folder, or a parent that is not writable, is refused).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile


class WriteError(ValueError):
    """A file or folder could not be written (one line naming the path and the reason)."""


def check_target(path, what: str = "output", *, folder: bool = False) -> str:
    """-> the absolute ``path`` if a file (``folder=False``) or a new folder could be written there, else
    :class:`WriteError`: the parent folder is missing or not writable, or ``path`` is a folder (for a file) /
    a non-empty folder or a file (for a folder)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise WriteError(f"cannot write {what} {path}: its folder {parent} does not exist (create it first)")
    if not folder and os.path.isdir(path):
        raise WriteError(f"cannot write {what} {path}: it is a folder, give a file name")
    if folder and os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise WriteError(f"cannot write {what} {path}: it already exists and is not an empty folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write {what} {path}: its folder {parent} is not writable")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(path: str) -> None:
    """Remove temporaries of ``path`` left by processes that no longer run (SIGKILL mid-write)."""
    d, name = os.path.split(path)
    for tmp in glob.glob(os.path.join(glob.escape(d), f".{glob.escape(name)}.*.tmp*")):
        pid = os.path.basename(tmp)[len(name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if os.path.isdir(tmp) else _unlink(tmp)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _fsync_dir(d: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return " ".join(str(e).split()) or type(e).__name__


@contextlib.contextmanager
def atomic_path(path, what: str = "file", errors: tuple = (OSError,)):
    """``with atomic_path(p) as tmp: writer(tmp)``: the writer fills ``tmp`` (same folder), which is fsynced and
    renamed to ``p`` when the block succeeds; removed on any failure (``errors``, e.g. a library's own I/O error
    type, become :class:`WriteError`)."""
    path = check_target(path, what)
    _clean_stale(path)
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        _unlink(tmp)
        if isinstance(e, errors) and not isinstance(e, WriteError):
            raise WriteError(f"cannot write {what} {path}: {_one_line(e)}") from None
        raise
    _fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", what: str = "file", **kwargs):
    """``with atomic_open(p, "w") as f: f.write(...)``: an open file under the temporary name; flushed, fsynced
    and renamed to ``p`` when the block succeeds (see :func:`atomic_path`)."""
    with atomic_path(path, what) as tmp:
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()


def write_text(path, text: str, what: str = "file") -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    with atomic_open(path, "w", what, encoding="utf-8") as f:
        f.write(text)


def fresh_dir(path, what: str = "folder") -> str:
    """A new temporary folder beside ``path`` (which must not exist, or be an empty folder) to fill, then
    :func:`publish_dir`. A missing parent folder is created (the destination of a conversion or export is a
    new folder by nature)."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    check_target(path, what, folder=True)
    _clean_stale(path)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.{os.getpid()}.tmp-", dir=os.path.dirname(path))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def publish_dir(tmp: str, path) -> None:
    """Rename the filled temporary folder ``tmp`` to ``path`` (an empty folder there is replaced)."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        os.rmdir(path)  # empty (checked by fresh_dir)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(path))


@contextlib.contextmanager
def atomic_dir(path, what: str = "folder"):
    """``with atomic_dir(p) as tmp: fill(tmp)``: the folder appears at ``p`` complete, or not at all."""
    tmp = fresh_dir(path, what)
    try:
        yield tmp
        publish_dir(tmp, path)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise WriteError(f"cannot write {what} {os.path.abspath(os.fspath(path))}: {_one_line(e)}") from None
        raise
