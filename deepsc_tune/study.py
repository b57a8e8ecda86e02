"""The persistent Optuna study: storage, create or resume, orphaned trials, the worker loop.

One study lives in one relational database: SQLite under ``results/NAME/study.db`` on one
machine (write-ahead log, so local workers read while one writes), PostgreSQL
(``--storage postgresql://...``) for workers on many machines (docs/distributed.md). Running the
same command again resumes: finished trials are kept, trials a dead process left RUNNING are
marked FAIL with a reason and their parameters re-queued, and work continues until the study
holds ``n_trials`` finished (complete or pruned) search trials.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune import __version__
from deepsc_tune.backend import EpochMetrics, Finetuner
from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.objective import build_objective, process_start_time
from deepsc_tune.reseed import SHARED_SEED_SAMPLERS, seeded_per_trial
from deepsc_tune.search_space import SearchSpace
from deepsc_tune.space_record import read_record, sqlite_folder, summary_attrs, write_record
from deepsc_tune.study_file import check_study_file, sqlite_file

#: Seconds between a running trial's heartbeats, and how long without one marks it dead.
#: The environment variables below override them (whole seconds; tests use 1 and 3).
HEARTBEAT_INTERVAL = 10
GRACE_PERIOD = 30
HEARTBEAT_ENV = "DEEPSC_TUNE_HEARTBEAT"
GRACE_ENV = "DEEPSC_TUNE_GRACE"
#: SQLite waits this long for a lock before "database is locked" (several local workers).
SQLITE_TIMEOUT = 120
#: How often a worker with nothing to run checks whether others' trials finished or died.
POLL_SECONDS = 0.5

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# ----------------------------------------------------------------------------- storage


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
    with "database is locked". An existing SQLite file is checked first
    (:func:`~deepsc_tune.study_file.check_study_file`): a damaged one is refused untouched, and
    one on read-only media is opened read-only for readers (``heartbeat=False``) and refused
    for writers.
    """
    url = check_study_file(with_driver(url), write=heartbeat)
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
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        if url.startswith("sqlite") and "mode=ro" not in url:
            _use_wal(storage)
        return storage
    except ImportError as e:
        raise DeepscTuneError(
            f"--storage {redact(url)}: the database driver is missing ({e}); "
            "for PostgreSQL: pip install 'deepsc-tune[postgres]'"
        ) from None
    except Exception as e:  # sqlalchemy's errors name the driver problem in their first line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DeepscTuneError(f"--storage {redact(url)}: cannot open the study database: {first}") from None


def _flock_file(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (nothing where it cannot be had: Windows, a
    folder that does not exist; SQLite reports those itself)."""
    acquire = _flock_acquirer(path)
    try:
        release = acquire() if acquire is not None else None
    except OSError:
        release = None
    try:
        yield
    finally:
        if release is not None:
            release()


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
        yield from _flock_file(Path(f"{db}.start-lock"))
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


STALE_REASON = "worker stopped sending heartbeats (killed, preempted or lost)"


def _requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    user_attrs = {
        "retry_of": trial.number,
        "retry_reason": reason,
        "retry_count": trial.user_attrs.get("retry_count", 0) + 1,
    }
    for key in ("repeat_of", "repeat_seed", "enqueued"):
        if key in trial.user_attrs:
            user_attrs[key] = trial.user_attrs[key]
    study.enqueue_trial(trial.params, user_attrs=user_attrs, skip_if_exists=False)


#: A configuration whose worker keeps dying is not retried forever.
MAX_RETRIES = 3


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback``: re-queue a trial whose worker stopped beating.

    Optuna has already marked it FAIL (killed worker, preempted node); the retry carries
    ``retry_of`` and the reason so reports can tell why the original failed.
    """
    if trial.user_attrs.get("retry_count", 0) >= MAX_RETRIES:
        return
    _requeue(study, trial, STALE_REASON)


# ----------------------------------------------------------------------------- study


def sampler_label(url: str, worker_id: str | None) -> str | None:
    """What sets a worker's sampler seed apart (see :func:`worker_seed`).

    ``--worker-id`` when given; otherwise, on a shared server (not SQLite), this host and
    process, because the same command started on several machines must not propose the same
    settings; ``None`` (the study's own seed) for a lone worker on SQLite.
    """
    if worker_id:
        return worker_id
    if url.startswith("sqlite"):
        return None
    return f"{socket.gethostname()}-{os.getpid()}"


def worker_seed(seed: int | None, label: str | None) -> int | None:
    """The sampler seed of one worker among several.

    Workers with one seed draw the same random numbers and so propose the same settings; each
    gets the study's seed shifted by a stable hash of its label. A lone worker (``label``
    ``None``) keeps the seed, so single-process runs stay reproducible; ``None`` stays ``None``.
    """
    if seed is None or label is None:
        return seed
    return (int(seed) + zlib.crc32(label.encode())) % 2**32


def build_study_sampler(space: SearchSpace, worker: str | None = None) -> optuna.samplers.BaseSampler:
    """The space's sampler, seeded per trial number (:mod:`deepsc_tune.reseed`) and per worker.

    A continuation (resume, raised target, a second process) thus never replays earlier draws.
    """
    seed = space.sampler_config.get("seed")
    kind = space.sampler_config.get("type")
    if seed is None:
        return space.build_sampler()
    if worker is not None and kind not in SHARED_SEED_SAMPLERS:
        seed = worker_seed(seed, worker)

    def build(value: int | None) -> optuna.samplers.BaseSampler:
        return replace(space, sampler_config={**space.sampler_config, "seed": value}).build_sampler()

    return seeded_per_trial(kind, seed, build)


def open_study(
    space: SearchSpace,
    *,
    storage: RDBStorage | str,
    study_name: str,
    data_fingerprint: str | None = None,
    worker: str | None = None,
    record_dir: Path | None = None,
) -> optuna.Study:
    """Create the study, or load it and check it was made from the same search space.

    A new study records the search-space text and hash, tool and Optuna versions and the data
    fingerprint, and queues the ``study.enqueue`` configurations (the usage guide's).
    ``worker`` (:func:`sampler_label`) gives this process its own sampler seed.

    Raises
    ------
    ConfigError
        When the stored study was made from a different search space or data.
    """
    sampler, pruner = build_study_sampler(space, worker), space.build_pruner()
    record_dir = record_dir or sqlite_folder(storage)
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
        )
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner)
        created = False
    if created:
        _describe_new_study(study, space, data_fingerprint)
        write_record(record_dir, space)
        return study
    # Another worker may have created it a moment ago and be writing its description.
    for _ in range(50):
        if "search_space_sha256" in study.user_attrs:
            break
        time.sleep(0.1)
    _check_same_study(study, space, study_name, data_fingerprint, record_dir=record_dir)
    if study.user_attrs.get("n_trials") != space.n_trials:
        study.set_user_attr("n_trials", space.n_trials)
    if study.metric_names is None:  # studies made before the objective had a name
        _set_metric_name(study, space.metric)
    write_record(record_dir, space)  # this machine's copy of the search space
    return study


def _set_metric_name(study: optuna.Study, metric: str) -> None:
    """Name the objective (optuna-dashboard and `optuna trials` show it instead of "value")."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])


def _describe_new_study(study: optuna.Study, space: SearchSpace, data_fingerprint: str | None) -> None:
    attrs = {
        "search_space_name": space.name,
        "search_space_path": str(space.path) if space.path else None,
        # The text and configuration go beside the study (space_record.py): attributes stay short.
        "search_space_sha256": space.sha256,
        **summary_attrs(space),
        "metric": space.metric,
        "n_trials": space.n_trials,
        "backend": space.backend,
        "deepsc_tune_version": __version__,
        "optuna_version": optuna.__version__,
        "data_fingerprint": data_fingerprint,
        "created_on": socket.gethostname(),
    }
    _set_metric_name(study, space.metric)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for params in space.enqueue:
        study.enqueue_trial(params, user_attrs={"enqueued": True}, skip_if_exists=True)


def _check_same_study(
    study: optuna.Study,
    space: SearchSpace,
    study_name: str,
    data_fingerprint: str | None,
    *,
    record_dir: Path | None = None,
) -> None:
    stored = study.user_attrs
    how = f"start a new study with --study-name {study_name}-2 (or another name), or restore the original settings"
    if stored.get("search_space_sha256") not in (None, space.sha256):
        record = read_record(stored, record_dir)
        changed = _changed_keys(record["config"], space.config) if record else []
        what = f" (changed: {', '.join(changed[:6])})" if changed else ""
        raise ConfigError(
            f"study '{study_name}' was made from a different search space{what}; refusing to mix results: {how}"
        )
    fp = stored.get("data_fingerprint")
    if fp and data_fingerprint and fp != data_fingerprint:
        raise ConfigError(
            f"study '{study_name}' was run on different data (fingerprint {fp[:12]} vs "
            f"{data_fingerprint[:12]}: a data file changed); refusing to mix results: {how}"
        )


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    ignore = {"study.n_trials", "study.max_failures", "study.timeout", "name", "description", "source"}
    out = []
    for key in sorted(set(old) | set(new)):
        path = f"{prefix}{key}"
        a, b = old.get(key), new.get(key)
        if path in ignore:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, prefix=f"{path}.")
        elif json.dumps(a, sort_keys=True, default=str) != json.dumps(b, sort_keys=True, default=str):
            out.append(path)
    return out


def search_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    """Trials of the search itself: repeats made by ``deepsc-tune repeat`` are left out."""
    return [t for t in study.get_trials(deepcopy=False, states=states) if "repeat_of" not in t.user_attrs]


def recover_orphaned_trials(study: optuna.Study) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker on this host is gone.

    Heartbeats catch dead workers anywhere, but only after a grace period; a trial started on
    this host by a process that no longer exists is known dead at once.
    """
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker") or {}
        if worker.get("host") != host or not worker.get("pid"):
            continue
        started = process_start_time(int(worker["pid"]))
        if started is not None and started == worker.get("started"):
            continue  # that worker is alive
        reason = f"worker process {worker['pid']} on {host} died while the trial ran"
        fail_trial(study, trial, reason)
        recovered.append(trial.number)
    return recovered


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's callback, re-queue) trials whose heartbeats stopped.

    Does nothing on a storage without heartbeats.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_trial(study: optuna.Study, trial: FrozenTrial, reason: str, *, requeue: bool = True) -> None:
    """Mark a RUNNING trial FAIL with ``reason`` (and re-queue its parameters)."""
    storage = study._storage
    try:
        storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
        changed = storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except RuntimeError:  # finished meanwhile
        return
    if changed and requeue and trial.user_attrs.get("retry_count", 0) < MAX_RETRIES:
        _requeue(study, trial, reason)


def failure_reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed, as recorded in the study."""
    if trial.state != TrialState.FAIL:
        return None
    reason = trial.user_attrs.get("fail_reason")
    if reason:
        return reason
    if trial.system_attrs.get("fail_reason"):
        return trial.system_attrs["fail_reason"]
    return STALE_REASON


# ----------------------------------------------------------------------------- start lock


class StartLock:
    """Makes "is there room under the target? then start a trial" atomic across workers.

    Without it two workers that finish at the same moment can both see one free slot and
    both start a trial, overshooting ``n_trials``. SQLite (one machine) uses an exclusive
    ``flock`` on a file next to the database; PostgreSQL a transaction-scoped advisory lock.
    Both are released by the operating system or the server if the worker dies, and both
    exclude threads of one process too (each :class:`StartLock` has its own descriptor or
    connection). Other databases get no lock (a rare overshoot by a trial or two).
    ``release`` is idempotent.
    """

    def __init__(self, acquire: Callable[[], Callable[[], None]] | None = None) -> None:
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
    """The :class:`StartLock` that suits ``storage`` (see there)."""
    from sqlalchemy.engine import make_url

    storage = getattr(storage, "_backend", storage)  # a study wraps its RDBStorage in a cache
    if not isinstance(storage, RDBStorage):
        return StartLock()
    url = make_url(storage.url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return StartLock()
        return StartLock(_flock_acquirer(Path(f"{url.database}.start-lock")))
    if url.get_backend_name() == "postgresql":
        digest = hashlib.sha256(f"deepsc-tune start {study_name}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        return StartLock(_pg_acquirer(storage.engine, key))
    return StartLock()


def _flock_acquirer(path: Path) -> Callable[[], Callable[[], None]] | None:
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


def _pg_acquirer(engine: Any, key: int) -> Callable[[], Callable[[], None]]:
    import sqlalchemy

    def acquire() -> Callable[[], None]:
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


# ----------------------------------------------------------------------------- running


@dataclass
class Progress:
    """Prints one line per trial (and a live epoch line on a terminal)."""

    metric: str
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    verbose: bool = False
    prefix: str = ""
    _live: bool = False

    def __post_init__(self) -> None:
        self._live = bool(getattr(self.stream, "isatty", lambda: False)())

    def epoch(self, number: int, m: EpochMetrics) -> None:
        value = m.metric(self.metric)
        text = f"{self.prefix}  trial {number:>3} epoch {m.epoch:>3}  {self.metric} {value:.4f}"
        if self.verbose:
            print(text, file=self.stream, flush=True)
        elif self._live:
            print(f"\r{text}\033[K", end="", file=self.stream, flush=True)

    def recovered(self, numbers: list[int]) -> None:
        """Said when it happens, before the trials that follow (not in the final summary)."""
        print(f"{self.prefix}re-queued trials left running by a dead process: {numbers}", file=self.stream, flush=True)

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self._live and not self.verbose:
            print("\r\033[K", end="", file=self.stream)
        print(self.prefix + format_trial_line(study, trial, self.metric), file=self.stream, flush=True)


def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_trial_line(study: optuna.Study, trial: FrozenTrial, metric: str) -> str:
    """``#  3 COMPLETE  params | metric per epoch | time | best so far``."""
    curve = " ".join(f"{trial.intermediate_values[e]:.3f}" for e in sorted(trial.intermediate_values))
    if len(trial.intermediate_values) > 12:
        values = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        curve = " ".join(f"{v:.3f}" for v in values[:4]) + " ... " + " ".join(f"{v:.3f}" for v in values[-4:])
    state = trial.state.name
    duration = trial.user_attrs.get("duration_s")
    parts = [f"#{trial.number:>3} {state:<8}", format_params(trial.params)]
    if curve:
        parts.append(f"{metric} {curve}")
    if duration is not None:
        parts.append(f"{duration:.1f}s")
    if trial.state == TrialState.FAIL:
        reason = (failure_reason(trial) or "").splitlines()[0][:160]
        parts.append(f"reason: {reason}")
    try:
        best = study.best_trial
        parts.append(f"best {best.value:.4f} (#{best.number})")
    except ValueError:
        pass
    return " | ".join(parts)


@dataclass
class RunSummary:
    """What a call of :func:`run_study` did."""

    study: optuna.Study
    ran: int
    recovered: list[int]
    finished: int
    target: int


class TooManyFailures(DeepscTuneError):
    """``study.max_failures`` trials failed one after another."""


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    counts = {s: 0 for s in TrialState}
    for t in search_trials(study):
        counts[t.state] += 1
    return counts


def run_study(
    space: SearchSpace,
    finetuner: Finetuner,
    *,
    study: optuna.Study,
    trials_dir: Path | None = None,
    progress: Progress | None = None,
    stop: Callable[[], bool] | None = None,
) -> RunSummary:
    """Run trials until the study holds ``space.n_trials`` finished search trials.

    Safe to run in several processes (or threads, each with its own storage) against one
    storage: each worker asks for the next trial under a :class:`StartLock`, so two workers
    never take the last slot together; when the remaining budget is taken by trials running
    elsewhere, it waits for them (one may fail and be re-queued) instead of overshooting the
    target. Trials of dead workers are failed and re-queued on the way
    (:func:`recover_orphaned_trials` at once on this host, heartbeats anywhere).

    Raises
    ------
    TooManyFailures
        After ``space.max_failures`` consecutive failed trials of this worker.
    KeyboardInterrupt
        Passed on after the running trial has been recorded as FAIL ("interrupted") and its
        parameters re-queued.
    """
    recovered: list[int] = []
    objective = build_objective(
        space,
        finetuner,
        trials_dir=trials_dir,
        on_epoch=progress.epoch if progress else None,
    )
    lock = start_lock(study._storage, study.study_name)
    current: list[int] = []

    def tracked(trial: optuna.trial.Trial) -> float:
        current[:] = [trial.number]
        lock.release()  # the trial is RUNNING now and counts for everyone
        return objective(trial)

    callbacks = [progress.trial_done] if progress else []
    ran = failures = 0
    target = space.n_trials
    while True:
        if stop is not None and stop():
            break
        lock.acquire()
        try:
            # Under the lock, so that two workers never fail and re-queue the same trial twice.
            found = recover_orphaned_trials(study)
            if found and progress is not None:
                progress.recovered(found)
            recovered += found
            fail_stale_trials(study)
            counts = count_states(study)
            finished = counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
            if finished >= target:
                break
            if finished + counts[TrialState.RUNNING] >= target:
                # Others hold the last trials; one of them may still fail and come back.
                # A queued trial (a retry) waits too: starting it would overshoot the target.
                lock.release()
                time.sleep(POLL_SECONDS)
                continue
            current.clear()
            try:
                study.optimize(tracked, n_trials=1, catch=(Exception,), callbacks=callbacks)
            except KeyboardInterrupt:
                lock.release()
                _requeue_interrupted(study, current)
                raise
        finally:
            lock.release()
        ran += 1
        last = (
            study._storage.get_trial(
                study._storage.get_trial_id_from_study_id_trial_number(study._study_id, current[0])
            )
            if current
            else None
        )
        if last is not None and last.state == TrialState.FAIL:
            failures += 1
            if failures >= space.max_failures:
                raise TooManyFailures(
                    f"stopped after {failures} failed trials in a row "
                    f"(study.max_failures={space.max_failures}); last: trial {last.number}: "
                    f"{(failure_reason(last) or '').splitlines()[0][:300]}"
                )
        else:
            failures = 0
    counts = count_states(study)
    return RunSummary(
        study=study,
        ran=ran,
        recovered=recovered,
        finished=counts[TrialState.COMPLETE] + counts[TrialState.PRUNED],
        target=target,
    )


def _requeue_interrupted(study: optuna.Study, current: list[int]) -> None:
    if not current:
        return
    storage = study._storage
    trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, current[0]))
    if trial.state == TrialState.FAIL:
        _requeue(study, trial, "interrupted")


def best_search_trial(study: optuna.Study) -> FrozenTrial:
    """The best COMPLETE search trial.

    Raises
    ------
    DeepscTuneError
        When no trial has completed yet.
    """
    complete = search_trials(study, states=(TrialState.COMPLETE,))
    if not complete:
        n = len(study.get_trials(deepcopy=False))
        raise DeepscTuneError(
            f"study '{study.study_name}' has no completed trial yet ({n} trials in all); "
            "run `deepsc-tune run` first or let it finish a trial"
        )
    return max(complete, key=lambda t: (t.value, -t.number))


def load_existing_study(*, storage: RDBStorage, study_name: str) -> optuna.Study:
    """Load a study for reading, with a clear error when it does not exist."""
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise DeepscTuneError(
            f"no study '{study_name}' in {redact(storage.url)}; "
            f"studies there: {', '.join(names) or '(none)'}; run `deepsc-tune run {study_name}` first"
        ) from None
