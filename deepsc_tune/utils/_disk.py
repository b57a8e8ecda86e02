"""A full disk, told apart from other failures and said in one line naming the path.

A full disk shows in many forms: ``OSError`` ENOSPC (or EDQUOT, a quota) from a file write,
SQLite's "database or disk is full" deep inside SQLAlchemy and Optuna, and sometimes only
"disk I/O error" when SQLite cannot create or grow its ``-shm``/``-wal`` files. :func:`disk_full`
looks through an exception's whole chain and returns a :class:`DiskFull` error (a
:class:`~deepsc_tune.errors.DeepscTuneError`) when the cause is a full disk; an I/O error counts
only when the device really has (almost) no space left. (The study's runner stops at the
first trial a full disk stopped: :class:`deepsc_tune.study._runner.FullDiskStop`.)
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path
from typing import Any

from deepsc_tune.errors import DeepscTuneError

#: Below this many free bytes a device counts as full (SQLite needs room for its journal pages).
LOW_SPACE = 1 << 20
_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_SQLITE_FULL = 13  # SQLITE_FULL
_SQLITE_IOERR = 10  # SQLITE_IOERR (and its extended codes, modulo 256)


class DiskFull(DeepscTuneError):
    """The disk holding ``path`` is full: nothing more could be written there."""

    def __init__(self, path: Path | str | None, what: str = "", *, elsewhere: str = "--results-dir") -> None:
        self.path = None if path is None else Path(path)
        where = f"{self.path}: " if self.path is not None else ""
        free = free_bytes(self.path) if self.path is not None else None
        room = f": {free} bytes free" if free is not None and free < LOW_SPACE else ""
        super().__init__(
            f"{where}the disk is full (no space left on the device{room}); {what}"
            f"free some space there (or use another {elsewhere}) and run the same command again"
        )


def free_bytes(path: Path | str) -> int | None:
    """Bytes an unprivileged user may still write on the device holding ``path`` (``None``: unknown)."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            try:
                st = os.statvfs(part)
            except OSError:
                return None
            return st.f_bavail * st.f_frsize
    return None


def disk_is_full(path: Path | str) -> bool:
    """Whether the device holding ``path`` has (almost) no space left."""
    free = free_bytes(path)
    return free is not None and free < LOW_SPACE


def _chain(error: BaseException):
    seen: set[int] = set()
    stack: list[BaseException | None] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def disk_full(error: BaseException, path: Path | str | None = None, *, what: str = "") -> DiskFull | None:
    """A :class:`DiskFull` error when ``error`` (or anything in its chain) means a full disk.

    ``path``: the file being written when the error does not name one (a study database).
    ``what``: said before the advice (what happened to the work, e.g. a re-queued trial).
    """
    for e in _chain(error):
        if isinstance(e, DiskFull):
            return e
        if isinstance(e, OSError) and e.errno in _FULL_ERRNOS:
            return DiskFull(e.filename or path, what)
        if isinstance(e, sqlite3.Error):
            code = getattr(e, "sqlite_errorcode", None)
            if code == _SQLITE_FULL or "database or disk is full" in str(e):
                return DiskFull(path, what)
            io_error = (code is not None and code % 256 == _SQLITE_IOERR) or "disk I/O error" in str(e)
            if io_error and path is not None and disk_is_full(path):
                return DiskFull(path, what)
        if isinstance(e, (OSError, RuntimeError)) and "No space left on device" in str(e):  # h5py, torch
            return DiskFull(getattr(e, "filename", None) or path, what)
    return None


def quiet_heartbeats_on_full_disk() -> None:
    """A full disk in Optuna's heartbeat thread ends that thread without a traceback.

    The trial goes on; its next write in the main thread meets the full disk too and stops the
    search with one line (:class:`deepsc_tune.study._runner.FullDiskStop`). Installed once, as ``threading.excepthook``;
    any other exception of any thread goes to the hook that was there before.
    """
    import threading

    previous = threading.excepthook
    if getattr(previous, "deepsc_tune_full_disk", False):
        return

    def hook(args: Any) -> None:
        frames, tb = [], args.exc_traceback
        while tb is not None:
            frames.append(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
        if "_record_heartbeat" in frames and args.exc_value is not None and disk_full(args.exc_value):
            return
        previous(args)

    hook.deepsc_tune_full_disk = True  # type: ignore[attr-defined]
    threading.excepthook = hook
