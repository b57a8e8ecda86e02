"""A study database server that goes away for a while: retry for a bounded time, then stop.

A PostgreSQL server restarted (an update, a failover) or stopped under a running search used to
end it with a traceback from deep inside SQLAlchemy. :class:`ReconnectingStorage` is Optuna's
``RDBStorage`` whose public storage calls, and every new connection to a server, are retried
while the connection is lost, for at most :func:`retry_seconds` in all (``DEEPSC_TUNE_DB_RETRY``, default
:data:`RETRY_SECONDS`) counted from the first failure: a restart goes unnoticed but for a pause.
When the server is not back in time, :class:`DatabaseUnreachable` says so in one line (the CLI
exits 1) and every later call fails at once, so the command ends quickly. The trial that was
running stays RUNNING in the database and is recovered (FAIL, re-queued) by the next ``run`` on
this machine, or after the heartbeat grace period by any worker (:mod:`deepsc_tune.study._recovery`).

On SQLite (one machine, no server) only "database is locked" is retried, which SQLite reports
without waiting when two processes write at once in write-ahead-log mode (workers stopped
together); its busy timeout covers the rest.

Missed heartbeats are not retried (the next beat comes soon; a worker silent for longer than the
grace period is declared dead, see docs/distributed.md). A write whose commit reached the
server just before the connection broke is sent again; Optuna then refuses a second state change, which the runner
handles as a trial finished elsewhere.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from optuna.storages import RDBStorage

from deepsc_tune.errors import ConfigError, DeepscTuneError

#: Seconds a lost connection is retried, in all, before the command stops.
RETRY_SECONDS = 60
RETRY_ENV = "DEEPSC_TUNE_DB_RETRY"
_PAUSE_S = 1.0
T = TypeVar("T")


class DatabaseUnreachable(DeepscTuneError):
    """The study database's server did not come back within the retry bound."""


def retry_seconds() -> float:
    """The retry bound (``DEEPSC_TUNE_DB_RETRY``, whole seconds, 0: no retry).

    Raises
    ------
    ConfigError
        When the variable is not a whole number of seconds >= 0.
    """
    text = os.environ.get(RETRY_ENV, "").strip()
    if not text:
        return RETRY_SECONDS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{RETRY_ENV}={text!r}: expected a whole number of seconds (0: no retry)")
    return value


def connection_lost(error: BaseException) -> BaseException | None:
    """The driver's error if ``error`` (or what caused it) is a lost or refused connection."""
    from sqlalchemy import exc

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DatabaseUnreachable):
            return None  # given up already
        if isinstance(e, exc.DBAPIError) and (
            e.connection_invalidated or isinstance(e, (exc.OperationalError, exc.InterfaceError))
        ):
            return e
        e = e.__cause__ or e.__context__
    return None


def sqlite_busy(error: BaseException) -> BaseException | None:
    """SQLite's error if ``error`` is "database is locked" that its busy timeout did not cover.

    In write-ahead-log mode a transaction that read first and then writes, while another
    process committed, fails at once (waiting could deadlock); the transaction was rolled back
    and trying it again is safe.
    """
    import sqlite3

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        for found in (e, getattr(e, "orig", None)):  # SQLAlchemy keeps the driver's error as .orig
            if isinstance(found, sqlite3.OperationalError) and "locked" in str(found):
                return found
        e = e.__cause__ or e.__context__
    return None


def unreachable_in(error: BaseException) -> DatabaseUnreachable | None:
    """The :class:`DatabaseUnreachable` behind ``error``, if any.

    Optuna may replace it on its way out: when recording a trial fails and reading the trial
    back fails too, ``study.optimize`` raises an ``UnboundLocalError`` of its own, with ours as
    its context.
    """
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DatabaseUnreachable):
            return e
        e = e.__cause__ or e.__context__
    return None


def _first_line(error: BaseException) -> str:
    from sqlalchemy import exc

    inner = error.orig if isinstance(error, exc.DBAPIError) and error.orig is not None else error
    text = str(inner).strip().splitlines()
    return text[0][:200] if text else type(inner).__name__


class _Outage:
    """The clock of one outage, shared by every call and connection of a storage."""

    def __init__(self, bound: float, where: str, *, sqlite: bool = False) -> None:
        self.bound = bound
        self.where = where
        self.sqlite = sqlite  # SQLite: only "database is locked" is retried, briefly between tries
        self.since: float | None = None
        self.lost: DatabaseUnreachable | None = None
        self.lock = threading.Lock()

    def call(self, fn: Callable[[], T]) -> T:
        while True:
            if self.lost is not None:
                raise self.lost
            try:
                result = fn()
            except KeyboardInterrupt:
                raise
            except Exception as e:
                driver = sqlite_busy(e) if self.sqlite else connection_lost(e)
                if driver is None:
                    raise
                self._wait(driver)
                continue
            with self.lock:
                self.since = None
            return result

    def _wait(self, driver: BaseException) -> None:
        now = time.monotonic()
        with self.lock:
            self.since = self.since if self.since is not None else now
            waited = now - self.since
            if waited >= self.bound and self.lost is None and self.sqlite:
                self.lost = DatabaseUnreachable(
                    f"the study database {self.where} stayed locked by other processes for "
                    f"{self.bound:g} s ({RETRY_ENV}): {_first_line(driver)}; run the same command to go on"
                )
            if waited >= self.bound and self.lost is None:
                self.lost = DatabaseUnreachable(
                    f"lost the connection to the study database {self.where} and it did not come back "
                    f"within {self.bound:g} s ({RETRY_ENV}): {_first_line(driver)}; the running trial "
                    "stays RUNNING there and the next run recovers it (FAIL, re-queued): run the same "
                    "command once the database is back"
                )
            if self.lost is not None:
                raise self.lost from None
        try:
            time.sleep(min(_PAUSE_S / 10 if self.sqlite else _PAUSE_S, self.bound - waited))
        except KeyboardInterrupt:
            # Ctrl-C while waiting: the command ends; do not wait again for each call on the way.
            with self.lock:
                self.lost = self.lost or DatabaseUnreachable(
                    f"the study database {self.where} was unreachable when the command was interrupted"
                )
            raise


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(RDBStorage, name)

    @functools.wraps(method)
    def call(self: ReconnectingStorage, *args: Any, **kwargs: Any) -> Any:
        return self.outage.call(lambda: method(self, *args, **kwargs))

    return call


#: Optuna's public storage calls (``BaseStorage``) that are retried.
RETRIED = (
    "create_new_study",
    "delete_study",
    "set_study_user_attr",
    "set_study_system_attr",
    "get_study_id_from_name",
    "get_study_name_from_id",
    "get_study_directions",
    "get_study_user_attrs",
    "get_study_system_attrs",
    "get_all_studies",
    "create_new_trial",
    "set_trial_param",
    "get_trial_id_from_study_id_trial_number",
    "get_trial_number_from_id",
    "get_trial_param",
    "set_trial_state_values",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "get_trial",
    "get_all_trials",
    "get_n_trials",
    "get_best_trial",
    "get_trial_params",
    "get_trial_user_attrs",
    "get_trial_system_attrs",
)


class ReconnectingStorage(RDBStorage):
    """``RDBStorage`` that rides out a lost connection for :func:`retry_seconds` (see the module).

    Opened like ``RDBStorage``, plus ``where`` (the URL without its password, for messages). The
    first connection is not retried: a server that is not there at the start is reported at once.
    On SQLite only "database is locked" is retried (:func:`sqlite_busy`), for the same bound.
    """

    def __init__(self, url: str, *, where: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        sqlite = url.startswith("sqlite")
        self.outage = _Outage(retry_seconds(), where, sqlite=sqlite)
        if not sqlite:
            import sqlalchemy

            # Every new connection from now on (the pool's, the start lock's) waits for the server too.
            sqlalchemy.event.listen(self.engine, "do_connect", self._connect)

    def _connect(self, dialect: Any, conn_rec: Any, cargs: Any, cparams: Any) -> Any:
        from sqlalchemy import exc

        def connect() -> Any:
            try:
                return dialect.connect(*cargs, **cparams)
            except dialect.loaded_dbapi.Error as e:
                raise exc.OperationalError("connect", None, e) from e

        return self.outage.call(connect)

    def call_with_retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a statement of one's own on :attr:`engine`) with the same retry."""
        return self.outage.call(fn)

    def record_heartbeat(self, trial_id: int) -> None:
        # Optuna's heartbeat thread: a missed beat is no error (a raise here prints a traceback).
        if self.outage.lost is not None:
            return
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if connection_lost(e) is None and sqlite_busy(e) is None and not isinstance(e, DatabaseUnreachable):
                raise


for _name in RETRIED:
    setattr(ReconnectingStorage, _name, _retried(_name))
