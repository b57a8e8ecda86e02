"""start_lock.py: one worker at a time between "room under the target?" and starting a trial.

Workers racing for the last slots (threads on SQLite and PostgreSQL, processes) run in
tests/study/test_workers.py and tests/test_faults.py.
"""

from __future__ import annotations

import threading

import optuna

from deepsc_tune.study._start_lock import StartLock, start_lock
from deepsc_tune.study._storage import default_storage_url, open_storage


def test_two_locks_on_one_sqlite_study_exclude_each_other(tmp_path):
    storage = open_storage(default_storage_url("curve", tmp_path), heartbeat=False)
    first, second = start_lock(storage, "curve"), start_lock(storage, "curve")
    first.acquire()
    taken = threading.Event()

    def take() -> None:
        second.acquire()
        taken.set()
        second.release()

    thread = threading.Thread(target=take)
    thread.start()
    assert not taken.wait(0.5)  # waits while the first is held
    first.release()
    first.release()  # idempotent
    assert taken.wait(10)
    thread.join(10)


def test_storages_without_a_lock_get_one_that_does_nothing():
    for storage in (None, optuna.storages.InMemoryStorage(), "sqlite:///x.db"):
        lock = start_lock(storage, "curve")
        assert isinstance(lock, StartLock)
        lock.acquire()
        lock.release()
