"""Where a study lives: storage URLs, opening the database, heartbeat settings.

One study lives in one relational database: SQLite under ``results/NAME/study.db`` on one
machine (write-ahead log, so local workers read while one writes), PostgreSQL
(``--storage postgresql://...``) for workers on many machines (docs/distributed.md).
:func:`open_storage` returns Optuna's ``RDBStorage``; the study keeps it privately, so
:func:`remember` notes which storage a study was opened on and :func:`storage_of` gives it back
(the start lock and recovery need it; Optuna's public API only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.reconnect import ReconnectingStorage, retry_seconds
from deepsc_tune.recovery import requeue_stale_trial
from deepsc_tune.start_lock import hold_flock
from deepsc_tune.study_file import check_study_file, sqlite_file, watch_study_file

#: Seconds between a running trial's heartbeats, and how long without one marks it dead.
#: The environment variables below override them (whole seconds; tests use 1 and 3).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
HEARTBEAT_ENV = "DEEPSC_TUNE_HEARTBEAT"
GRACE_ENV = "DEEPSC_TUNE_GRACE"
#: SQLite waits this long for a lock before "database is locked" (several local workers).
SQLITE_TIMEOUT = 120


def default_storage_url(name: str, results_dir: Path) -> str:
    """``sqlite:///results/NAME/study.db`` (the folder is created).

    Raises
    ------
    DeepscTuneError
        When the folder cannot be created (a file in the way, read-only media, no permission).
    """
    folder = Path(results_dir) / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeepscTuneError(f"--results-dir {results_dir}: {folder_problem(folder, e)}") from None
    return f"sqlite:///{folder / 'study.db'}"


def folder_problem(folder: Path, error: OSError) -> str:
    """Why ``folder`` could not be created, in words (a file in the way, read-only media...)."""
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            return f"cannot create {folder}: {part} is a file, not a folder"
    if error.errno == errno.EROFS:
        return f"cannot create {folder}: read-only file system"
    if error.errno == errno.EACCES:
        return f"cannot create {folder}: not writable (permission denied)"
    return f"cannot create {folder}: {error.strerror}"


def heartbeat_settings() -> tuple[int, int]:
    """Heartbeat interval and grace period in seconds (``DEEPSC_TUNE_HEARTBEAT``/``_GRACE``).

    Raises
    ------
    ConfigError
        When a variable is not a positive whole number, or the grace period is not longer
        than the interval (a live worker would be declared dead).
    """
    values = []
    for env, default in ((HEARTBEAT_ENV, HEARTBEAT_INTERVAL), (GRACE_ENV, GRACE_PERIOD)):
        text = os.environ.get(env, "").strip()
        if not text:
            values.append(default)
            continue
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise ConfigError(f"{env}={text!r}: expected a positive whole number of seconds")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise ConfigError(
            f"{GRACE_ENV}={grace} must be longer than {HEARTBEAT_ENV}={interval} "
            "(several missed heartbeats mark a worker dead)"
        )
    return interval, grace


def open_storage(url: str, *, heartbeat: bool = True) -> RDBStorage:
    """Open an Optuna RDB storage with heartbeats, so a killed worker's trials get failed.

    SQLite gets a long lock timeout so that several local workers queue instead of failing
    with "database is locked". A database server gets a :class:`ReconnectingStorage`: once
    opened, a lost connection is retried for ``DEEPSC_TUNE_DB_RETRY`` seconds (default 60). An existing SQLite file is checked first
    (:func:`~deepsc_tune.study_file.check_study_file`): a damaged one is refused untouched, and
    one on read-only media is opened read-only for readers (``heartbeat=False``) and refused
    for writers.
    """
    url = check_study_file(with_driver(url), write=heartbeat)
    retry_seconds()  # a bad DEEPSC_TUNE_DB_RETRY is reported before anything is opened
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if heartbeat:
        interval, grace = heartbeat_settings()
        kwargs = {
            "heartbeat_interval": interval,
            "grace_period": grace,
            "heartbeat_stale_trial_callback": requeue_stale_trial,
        }
    try:
        with warnings.catch_warnings(), _schema_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "mode=ro" in url:  # read-only media: nothing to wait for
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            else:  # a lost connection, a busy SQLite file: retried for a while (reconnect.py)
                storage = ReconnectingStorage(url, where=redact(url), engine_kwargs=engine_kwargs, **kwargs)
        if url.startswith("sqlite") and "mode=ro" not in url:
            _use_wal(storage)
            watch_study_file(storage, url)
        return storage
    except ImportError as e:
        raise DeepscTuneError(
            f"--storage {redact(url)}: the database driver is missing ({e}); "
            "for PostgreSQL: pip install 'deepsc-tune[postgres]'"
        ) from None
    except Exception as e:  # sqlalchemy's errors name the driver problem in their first line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeepscTuneError(f"--storage {redact(url)}: cannot open the study database: {first}") from None


@contextlib.contextmanager
def _schema_lock(url: str) -> Iterator[None]:
    """One process at a time creates or checks Optuna's tables.

    ``RDBStorage`` creates missing tables on open; workers started together on a new database
    (a SLURM array) race there and all but one die: ``UniqueViolation ...
    pg_type_typname_nsp_index`` on PostgreSQL, ``table alembic_version already exists`` on
    SQLite. PostgreSQL: a session-level advisory lock on a connection of its own (the server
    frees it if the process dies); SQLite: an exclusive ``flock`` on the file beside the
    database that the start lock uses. Other databases: no lock.
    """
    db = sqlite_file(url)
    if db is not None:  # two processes on a new SQLite file race the same way
        yield from hold_flock(Path(f"{db}.start-lock"))
        return
    if not url.startswith(("postgresql", "postgres")):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
                conn.commit()
    finally:
        engine.dispose()


#: The advisory lock key of :func:`_schema_lock` (any fixed 64-bit number; ours spells "dsctune").
SCHEMA_LOCK_KEY = int.from_bytes(b"dsctune\x01", "big", signed=True)


def with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed.

    SQLAlchemy reads a bare ``postgresql://`` as psycopg2; ``deepsc-tune[postgres]`` installs
    psycopg 3, so the URL users copy from PostgreSQL's documentation gets ``+psycopg`` when
    psycopg2 is absent. URLs naming a driver are left alone.
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            import importlib.util

            if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg"):
                return "postgresql+psycopg://" + url[len(bare) :]
            return "postgresql://" + url[len(bare) :]
    return url


def _use_wal(storage: RDBStorage) -> None:
    """SQLite in write-ahead-log mode, synced at checkpoints rather than at every commit.

    A trial commits several times per epoch (report, history); with SQLite's default rollback
    journal each commit waits for an fsync (about 10 ms here, most of a small trial's time) and
    writers block readers. WAL lets workers read while one writes, and a crash loses at most
    the last commits, never the database. All processes must be on one host: SQLite's rule,
    and ours (several machines: PostgreSQL).
    """
    import sqlalchemy

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(storage.engine, "connect", on_connect)
    storage.engine.dispose()  # connections opened while Optuna set the schema up get the pragmas too


def redact(url: str) -> str:
    """The storage URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


_OPENED_ON: weakref.WeakKeyDictionary[optuna.Study, BaseStorage] = weakref.WeakKeyDictionary()


def remember(study: optuna.Study, storage: BaseStorage) -> optuna.Study:
    """Note that ``study`` was opened on ``storage`` (see :func:`storage_of`); returns ``study``."""
    _OPENED_ON[study] = storage
    return study


def storage_of(study: optuna.Study) -> BaseStorage | None:
    """The storage ``study`` was opened on by :func:`remember`'s callers (``None``: not known)."""
    return _OPENED_ON.get(study)
