"""A lost database connection is retried for a bounded time, then stops in one line."""

from __future__ import annotations

import sqlite3
import time

import pytest
import sqlalchemy.exc

from deepsc_tune.errors import ConfigError
from deepsc_tune.study._reconnect import (
    DatabaseUnreachable,
    _Outage,
    connection_lost,
    retry_seconds,
    sqlite_busy,
    unreachable_in,
)


def lost() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("SELECT 1", None, OSError("server closed the connection unexpectedly"))


def test_a_connection_that_comes_back_is_waited_for(monkeypatch):
    monkeypatch.setattr("deepsc_tune.study._reconnect._PAUSE_S", 0.01)
    outage = _Outage(5, "postgresql://u:***@h/db")
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise lost()
        return "ok"

    assert outage.call(flaky) == "ok" and len(calls) == 3 and outage.since is None


def test_gives_up_after_the_bound_then_fails_at_once(monkeypatch):
    monkeypatch.setattr("deepsc_tune.study._reconnect._PAUSE_S", 0.01)
    outage = _Outage(0.2, "postgresql://u:***@h/db")

    def down():
        raise lost()

    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable) as caught:
        outage.call(down)
    assert 0.2 <= time.monotonic() - started < 2
    message = str(caught.value)
    assert "within 0.2 s" in message and "DEEPSC_TUNE_DB_RETRY" in message and "***" in message
    assert "\n" not in message
    started = time.monotonic()
    with pytest.raises(DatabaseUnreachable):
        outage.call(lambda: "never called")
    assert time.monotonic() - started < 0.1


def test_other_errors_are_not_retried():
    outage = _Outage(5, "x")
    with pytest.raises(ValueError):
        outage.call(lambda: (_ for _ in ()).throw(ValueError("a bug")))
    assert connection_lost(ValueError("x")) is None
    wrapped = RuntimeError("optuna's wrapper")
    wrapped.__cause__ = lost()
    assert connection_lost(wrapped) is not None


def test_sqlite_retries_only_a_locked_database(monkeypatch):
    monkeypatch.setattr("deepsc_tune.study._reconnect._PAUSE_S", 0.01)
    outage = _Outage(5, "sqlite:///x.db", sqlite=True)
    calls = []

    def busy():
        calls.append(1)
        if len(calls) < 2:
            raise sqlalchemy.exc.OperationalError("UPDATE", None, sqlite3.OperationalError("database is locked"))
        return "ok"

    assert outage.call(busy) == "ok"
    full = sqlalchemy.exc.OperationalError("INSERT", None, sqlite3.OperationalError("database or disk is full"))
    assert sqlite_busy(full) is None
    with pytest.raises(sqlalchemy.exc.OperationalError):
        outage.call(lambda: (_ for _ in ()).throw(full))


def test_optunas_own_error_on_the_way_out_still_names_the_database():
    given_up = DatabaseUnreachable("lost the connection ...")
    optunas = UnboundLocalError("cannot access local variable 'updated_state'")
    optunas.__context__ = given_up
    assert unreachable_in(optunas) is given_up and unreachable_in(ValueError()) is None


def test_retry_seconds(monkeypatch):
    monkeypatch.delenv("DEEPSC_TUNE_DB_RETRY", raising=False)
    assert retry_seconds() == 60
    monkeypatch.setenv("DEEPSC_TUNE_DB_RETRY", "0")
    assert retry_seconds() == 0
    for bad in ("soon", "-1", "1.5"):
        monkeypatch.setenv("DEEPSC_TUNE_DB_RETRY", bad)
        with pytest.raises(ConfigError, match="DEEPSC_TUNE_DB_RETRY"):
            retry_seconds()
