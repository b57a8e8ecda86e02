"""Where a study lives: storage URLs, opening the database, heartbeat settings.

One study lives in one relational database: SQLite under ``results/STUDY/study.db`` on one
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
from deepsc_tune.study._file import check_study_file, sqlite_file, watch_study_file
from deepsc_tune.study._folder import StudyFolder
from deepsc_tune.study._reconnect import ReconnectingStorage, retry_seconds
from deepsc_tune.study._recovery import requeue_stale_trial
from deepsc_tune.study._start_lock import hold_flock
from deepsc_tune.utils import disk_full, quiet_heartbeats_on_full_disk

#: Seconds between a running trial's heartbeats, and how long without one marks it dead.
#: The environment variables below override them (whole seconds; tests use 1 and 3).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
HEARTBEAT_ENV = "DEEPSC_TUNE_HEARTBEAT"
GRACE_ENV = "DEEPSC_TUNE_GRACE"
#: SQLite waits this long for a lock before "database is locked" (several local workers).
SQLITE_TIMEOUT = 120


def default_storage_url(name: str, results_dir: Path) -> str:
    """``sqlite:///RESULTS_DIR/NAME/study.db``, study NAME's own (the folder is created): :func:`folder_storage_url`."""
    return folder_storage_url(StudyFolder(Path(results_dir), name))


def folder_storage_url(folder: StudyFolder, storage: str | None = None) -> str:
    """``storage`` when given, else the SQLite file of the study folder (the folder is created).

    Raises
    ------
    DeepscTuneError
        When the folder cannot be created (a file in the way, read-only media, no permission).
    """
    if storage:
        return storage
    try:
        folder.db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DeepscTuneError(f"--results-dir {folder.results_dir}: {folder_problem(folder.db.parent, e)}") from None
    return folder.storage_url()


#: The SQLite file :func:`open_storage` opened last: where a full disk stopped a write that
#: does not name its file (SQLite's "database or disk is full"), see :func:`last_study_file`.
_LAST_FILE: Path | None = None


def last_study_file() -> Path | None:
    """The SQLite study file this process opened last (``None``: none, or another database)."""
    return _LAST_FILE


def folder_problem(folder: Path, error: OSError) -> str:
    """Why ``folder`` could not be created, in words (a file in the way, read-only media...)."""
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            return f"cannot create {folder}: {part} is a file, not a folder"
    if error.errno == errno.EROFS:
        return f"cannot create {folder}: read-only file system"
    if error.errno == errno.EACCES:
        return f"cannot create {folder}: not writable (permission denied)"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot create {folder}: the disk is full (no space left on the device)"
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


def open_storage(url: str, *, heartbeat: bool = True, label: str | None = "--storage") -> RDBStorage:
    """Open an Optuna RDB storage with heartbeats, so a killed worker's trials get failed.

    SQLite gets a long lock timeout so that several local workers queue instead of failing
    with "database is locked". A database server gets a :class:`ReconnectingStorage`: once
    opened, a lost connection is retried for ``DEEPSC_TUNE_DB_RETRY`` seconds (default 60). An existing SQLite file is checked first
    (:func:`~deepsc_tune.study._file.check_study_file`): a damaged one is refused untouched, and
    one on read-only media is opened read-only for readers (``heartbeat=False``) and refused
    for writers. ``label`` names where the URL came from in messages (``--storage``,
    ``DEEPSC_TUNE_STORAGE=``; ``None``: the default file under ``--results-dir``); no message
    ever shows any part of the URL's password.
    """
    where = redact(url) if not label else f"{label}{'' if label.endswith('=') else ' '}{redact(url)}"
    check_credentials(url, where=where)
    url = check_study_file(with_driver(url), write=heartbeat)
    retry_seconds()  # a bad DEEPSC_TUNE_DB_RETRY is reported before anything is opened
    global _LAST_FILE
    _LAST_FILE = sqlite_file(url) or _LAST_FILE
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": SQLITE_TIMEOUT}
    else:
        engine_kwargs["pool_pre_ping"] = True
    kwargs: dict[str, Any] = {}
    if heartbeat:
        quiet_heartbeats_on_full_disk()
        interval, grace = heartbeat_settings()
        kwargs = {
            "heartbeat_interval": interval,
            "grace_period": grace,
            "heartbeat_stale_trial_callback": requeue_stale_trial,
        }
    db_file = sqlite_file(url)
    existed = db_file is not None and db_file.exists()
    try:
        with warnings.catch_warnings(), _schema_lock(url):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if "mode=ro" in url:  # read-only media: nothing to wait for
                storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
            else:  # a lost connection, a busy SQLite file: retried for a while (study/_reconnect.py)
                storage = ReconnectingStorage(url, where=redact(url), engine_kwargs=engine_kwargs, **kwargs)
        if url.startswith("sqlite") and "mode=ro" not in url:
            _use_wal(storage)
            watch_study_file(storage, url)
        return storage
    except ImportError as e:
        raise DeepscTuneError(
            f"{where}: the database driver is missing ({scrub(str(e), url)}); "
            "for PostgreSQL: pip install 'deepsc-tune[postgres]'"
        ) from None
    except Exception as e:  # sqlalchemy's errors name the driver problem in their first line
        full = disk_full(e, sqlite_file(url))
        if full is not None:
            _remove_if_new_and_empty(sqlite_file(url), existed)
            raise full from None
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeepscTuneError(f"{where}: cannot open the study database: {scrub(first, url)}") from None


def _remove_if_new_and_empty(db: Path | None, existed: bool) -> None:
    """A study file this call created and could not fill (a full disk) is not left behind empty."""
    if db is None or existed:
        return
    with contextlib.suppress(OSError):
        if db.stat().st_size == 0:
            db.unlink()


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
    """The storage URL for messages, without any part of its password.

    SQLAlchemy parses the URL and renders it with ``***`` for the password (and for a
    ``?password=`` query parameter, which libpq reads too). A URL it cannot
    parse, or one whose host still holds an ``@`` (a password with an unescaped ``@``:
    ``u:p@ss@host`` parses as password ``p``, host ``ss@host``), shows nothing before the last
    ``@`` but the scheme.
    """
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: the crude rule below
        parsed = None
    if parsed is not None and "@" not in (parsed.host or ""):
        hidden = {k: "***" for k in parsed.query if "pass" in k.lower()}  # ?password=... (libpq)
        return parsed.update_query_dict(hidden).render_as_string(hide_password=True).replace("%2A%2A%2A", "***")
    if "@" not in url:
        return url
    head, _, tail = url.rpartition("@")
    scheme = head.split("://", 1)[0] + "://" if "://" in head else ""
    return f"{scheme}***@{tail}"


def check_credentials(url: str, *, where: str) -> None:
    """Refuse a URL whose password (or user name) holds an unescaped ``@``.

    SQLAlchemy would take the text after the first ``@`` for the host and the driver would
    print it in its error (a piece of the password).
    """
    from sqlalchemy.engine import make_url

    try:
        host = make_url(url).host or ""
    except Exception:  # noqa: BLE001 - not a URL: open_storage says so
        return
    if "@" in host:
        raise ConfigError(
            f"{where}: the user name or password holds an '@'; write it as %40 in the URL "
            "(percent-encoding: a@b -> a%40b)"
        )


def scrub(text: str, url: str) -> str:
    """``text`` (a driver's message) with the URL's password, as given or decoded, as ``***``."""
    from urllib.parse import quote, unquote

    from sqlalchemy.engine import make_url

    secrets: set[str] = set()
    try:
        parsed = make_url(url)
        password = parsed.password
        for key, value in parsed.query.items():
            if "pass" in key.lower():
                secrets |= {value} if isinstance(value, str) else set(value)
    except Exception:  # noqa: BLE001 - not a URL: hide what sits between '://user:' and the last '@'
        password = None
        rest = url.split("://", 1)[-1]
        if "@" in rest and ":" in rest.rpartition("@")[0]:
            password = rest.rpartition("@")[0].split(":", 1)[1]
    if password:
        password = str(password)
        secrets |= {password, quote(password, safe=""), unquote(password)}
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


_OPENED_ON: weakref.WeakKeyDictionary[optuna.Study, BaseStorage] = weakref.WeakKeyDictionary()


def remember(study: optuna.Study, storage: BaseStorage) -> optuna.Study:
    """Note that ``study`` was opened on ``storage`` (see :func:`storage_of`); returns ``study``."""
    _OPENED_ON[study] = storage
    return study


def storage_of(study: optuna.Study) -> BaseStorage | None:
    """The storage ``study`` was opened on by :func:`remember`'s callers (``None``: not known)."""
    return _OPENED_ON.get(study)
