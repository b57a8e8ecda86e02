"""The start lock: "is there room under the target? then start a trial", atomic across workers.

Without it two workers that finish at the same moment can both see one free slot and both start
a trial, overshooting ``n_trials``. SQLite (one machine) uses an exclusive ``flock`` on a file next
to the database; PostgreSQL a transaction-scoped advisory lock. Both are released by the operating
system or the server if the worker dies. :mod:`deepsc_tune.study._storage` uses the same ``flock`` to
create a new SQLite file's tables one process at a time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage

#: Takes a lock and returns the function that frees it.
Acquirer = Callable[[], Callable[[], None]]


class StartLock:
    """Makes "is there room under the target? then start a trial" atomic across workers.

    Both kinds of lock exclude threads of one process too (each :class:`StartLock` has its own
    descriptor or connection). Other databases get no lock (a rare overshoot by a trial or two).
    ``release`` is idempotent.
    """

    def __init__(self, acquire: Acquirer | None = None) -> None:
        self._acquire = acquire
        self._release: Callable[[], None] | None = None
        self._held = False

    def acquire(self) -> None:
        self._release = self._acquire() if self._acquire is not None else None
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        release, self._release = self._release, None
        if release is not None:
            release()


def start_lock(storage: Any, study_name: str) -> StartLock:
    """The :class:`StartLock` that suits ``storage`` (the study's ``RDBStorage``; anything else,
    ``None`` included, gets a lock that does nothing)."""
    from sqlalchemy.engine import make_url

    if not isinstance(storage, RDBStorage):
        return StartLock()
    url = make_url(storage.url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return StartLock()
        return StartLock(flock_acquirer(Path(f"{url.database}.start-lock")))
    if url.get_backend_name() == "postgresql":
        digest = hashlib.sha256(f"deepsc-tune start {study_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        return StartLock(_pg_acquirer(storage.engine, key, retry=getattr(storage, "call_with_retry", None)))
    return StartLock()


def flock_acquirer(path: Path) -> Acquirer | None:
    """An exclusive ``flock`` on ``path`` (``None`` where there is no ``flock``: Windows)."""
    try:
        import fcntl
    except ImportError:  # Windows: one worker per study there
        return None

    def acquire() -> Callable[[], None]:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return lambda: os.close(fd)  # closing the descriptor drops its flock

    return acquire


def hold_flock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (nothing where it cannot be had: Windows, a
    folder that does not exist; SQLite reports those itself)."""
    acquire = flock_acquirer(path)
    try:
        release = acquire() if acquire is not None else None
    except OSError:
        release = None
    try:
        yield
    finally:
        if release is not None:
            release()


def _pg_acquirer(engine: Any, key: int, *, retry: Callable[[Callable[[], Any]], Any] | None = None) -> Acquirer:
    """A transaction-scoped advisory lock; ``retry`` (the storage's) rides out a lost connection."""
    import sqlalchemy

    def acquire() -> Callable[[], None]:
        return retry(acquire_once) if retry is not None else acquire_once()

    def acquire_once() -> Callable[[], None]:
        conn = engine.connect()
        try:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        except BaseException:
            conn.invalidate()
            conn.close()
            raise

        def release() -> None:
            try:
                conn.rollback()  # ends the transaction, which frees the lock
            except Exception:
                conn.invalidate()  # a lost connection frees it on the server
            finally:
                conn.close()

        return release

    return acquire
