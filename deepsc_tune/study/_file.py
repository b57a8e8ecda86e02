"""The SQLite file of a study: damaged, or on read-only media, said in one line before use.

Optuna meets a damaged file deep inside SQLAlchemy (a long chain of ``StorageInternalError``)
and may have written to it by then; on read-only media it cannot even read, because SQLite
wants to create its ``-shm`` file next to a write-ahead-log database. Here the file is checked
first, read-only: a damaged file is reported and left untouched, and a study on read-only
media is opened immutable for the commands that only read (``status``, ``best``, ``report``).
On a full disk SQLite cannot create its ``-shm`` file either: that is said as a full disk, not
as damage, and readers read the file immutable when its write-ahead log is empty.

A file deleted (or replaced by another one) under a running search would take the trials run
since with it, while SQLite went on writing into the deleted file as if nothing happened; the
commands that write note which file they opened (:func:`watch_study_file`) and check that it is
still the one at its path between trials and before they report success
(:func:`check_study_file_unchanged`).
"""

from __future__ import annotations

import os
import sqlite3
import weakref
from pathlib import Path
from typing import Any

from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.utils import DiskFull, disk_is_full


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (``None`` for other databases and memory)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL at all: open_storage says so
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def writable(folder: Path) -> bool:
    """Whether files can be created in ``folder`` (False on read-only media, even for root)."""
    return os.access(folder, os.W_OK)


def check_study_file(url: str, *, write: bool) -> str:
    """Check a SQLite study file before Optuna opens it; return the URL to open it with.

    ``write``: the caller will write (``run``). A reader gets an immutable read-only URL when
    the file is on read-only media.

    Raises
    ------
    DeepscTuneError
        When the file is damaged (left untouched), is a folder, or must be written but cannot.
    """
    path = sqlite_file(url)
    if path is None:
        return url
    if path.is_dir():
        raise DeepscTuneError(f"{path} is a folder, not a study database; expected a SQLite file")
    if not path.exists():
        return url
    can_write = writable(path.parent) and os.access(path, os.W_OK)
    problem = integrity_problem(path, immutable=not can_write)
    if problem and disk_is_full(path):
        # SQLite could not create or grow its -shm file: the disk is full, not the file damaged.
        if not write and not _wal_pending(path) and integrity_problem(path, immutable=True) is None:
            return f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true"  # readers read it as it is
        raise DiskFull(path, "the study was left untouched; ")
    if problem:
        raise DeepscTuneError(
            f"{path} is damaged ({problem}); it was left untouched: restore a copy of it, or move "
            "it aside and run again to start a new study (or use another --results-dir)"
        )
    if can_write:
        return url
    if write:
        raise DeepscTuneError(
            f"{path}: the study is on read-only media (or its folder is not writable), and `run` "
            "writes trials: copy the folder somewhere writable and give --results-dir; "
            "`status`, `best` and `report` read it where it is"
        )
    return f"sqlite:///file:{path}?mode=ro&immutable=1&uri=true"


def _wal_pending(path: Path) -> bool:
    """Whether the write-ahead log beside ``path`` may hold commits not yet in the file."""
    wal = Path(f"{path}-wal")
    return wal.exists() and wal.stat().st_size > 0


def integrity_problem(path: Path, *, immutable: bool = False) -> str | None:
    """SQLite's ``quick_check`` of ``path``, read-only: ``None`` when sound, else the first problem."""
    mode = "ro&immutable=1" if immutable else "ro"
    try:
        conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=30)
    except sqlite3.Error as e:
        return str(e)
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        if rows == ["ok"]:
            return None
        found = [r for r in rows if not r.startswith("***")] or rows or ["no answer to quick_check"]
        return found[0].splitlines()[0][:200]
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):  # busy, not damaged: let Optuna wait for it
            return None
        return str(e)
    finally:
        conn.close()


def study_names(path: Path) -> list[str]:
    """The names of the studies in the SQLite file ``path``, read without writing anything
    beside it (``[]`` when it is not a readable study file)."""
    # immutable: no -shm or -wal file is created next to another study's database; a file with
    # a write-ahead log is read through it (its -shm exists while the writer has it open).
    mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
    try:
        conn = sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=30)
    except sqlite3.Error:
        return []
    try:
        return [str(r[0]) for r in conn.execute("SELECT study_name FROM studies").fetchall()]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


#: storage -> (its SQLite file, the file's (device, inode) when it was opened)
_WATCHED: weakref.WeakKeyDictionary[Any, tuple[Path, tuple[int, int]]] = weakref.WeakKeyDictionary()


class StudyFileGone(DeepscTuneError):
    """The study's SQLite file was deleted or replaced while a command wrote to it."""


def watch_study_file(storage: Any, url: str) -> None:
    """Note which file ``storage`` (opened on ``url``) writes, for :func:`check_study_file_unchanged`."""
    path = sqlite_file(url)
    if path is None:
        return
    try:
        st = path.stat()
    except OSError:
        return
    _WATCHED[storage] = (path, (st.st_dev, st.st_ino))


def check_study_file_unchanged(storage: Any) -> None:
    """Check that the file ``storage`` writes is still the one at its path.

    Raises
    ------
    StudyFileGone
        When the file (or its folder) was deleted, or another file was put in its place.
    """
    watched = None if storage is None else _WATCHED.get(storage)
    if watched is None:  # an in-memory study, or a database server: no file to watch
        return
    path, identity = watched
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StudyFileGone(
            f"{path} was deleted while this command ran (or its folder was): the trials recorded "
            "since are lost with it; stopped. Restore the file from a copy to go on, or run again "
            "to start a new study"
        ) from None
    except OSError as e:
        raise StudyFileGone(f"{path}: cannot check the study file any more ({e.strerror or e}); stopped") from None
    if (st.st_dev, st.st_ino) != identity:
        raise StudyFileGone(
            f"{path} was replaced by another file while this command ran: the trials recorded since "
            "went to the file it replaced and are lost; stopped without touching the new one. "
            "Run again to go on with the study now in that file"
        )
