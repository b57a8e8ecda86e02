"""The one trial loop of every runner (search, repeats, confirmation), and one trial of it.

:func:`run_trials` is the loop: each round, under the start lock, it recovers the trials of dead
workers, asks the runner whether to start a trial, wait for other workers or stop, and runs one
trial; the runners (:func:`~deepsc_tune.study._study.run_study`,
:func:`~deepsc_tune.study._repeat.run_repeats`, :func:`~deepsc_tune.study._confirm.run_confirmation`)
only say when to stop. :func:`run_one_trial` runs ``study.optimize(n_trials=1)`` and turns what can end a trial from
outside into one outcome each: Ctrl-C or SIGTERM (the trial recorded as interrupted and its
settings re-queued, :mod:`deepsc_tune.study._recovery`), a database that did not come back
(:mod:`deepsc_tune.study._reconnect`), a trial another worker took over while this process was
stopped, and a full disk (:class:`FullDiskStop`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.backends import EpochMetrics
from deepsc_tune.study._file import check_study_file_unchanged, sqlite_file
from deepsc_tune.study._reconnect import unreachable_in
from deepsc_tune.study._recovery import (
    fail_stale_trials,
    recover_orphaned_trials,
    requeue,
    requeue_interrupted,
    requeue_lost_retries,
)
from deepsc_tune.study._start_lock import start_lock
from deepsc_tune.study._storage import storage_of
from deepsc_tune.study._trial_record import FAIL_REASON
from deepsc_tune.utils import DiskFull, disk_full, interrupt_reason


class Watcher(Protocol):
    """What a runner tells whoever watches it (the console's progress, :mod:`deepsc_tune.cli`):
    the study never imports the console, it calls these."""

    def epoch(self, number: int, m: EpochMetrics) -> None:
        """Trial ``number`` reported an epoch."""

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """A trial ended (a study callback)."""

    def recovered(self, numbers: list[int]) -> None:
        """Trials of dead workers were failed and re-queued."""

    def requeued(self, numbers: list[int]) -> None:
        """Interrupted trials whose retry was missing were re-queued."""

    def taken_over(self, number: int) -> None:
        """Another worker finished trial ``number`` while this process was stopped."""

    def close(self) -> None:
        """The runner stops (a live line on the terminal ends)."""


#: How often a worker with nothing to run checks whether others' trials finished or died.
POLL_SECONDS = 0.5
#: What a runner answers each round: run a trial now, wait for the other workers, or stop.
Step = Literal["start", "wait", "stop"]


@dataclass
class Ran:
    """What :func:`run_trials` did in this process."""

    trials: list[int] = field(default_factory=list)  # numbers of the trials it ran to their end
    recovered: list[int] = field(default_factory=list)  # trials of dead workers it failed and re-queued


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.trial.Trial], float],
    *,
    next_step: Callable[[], Step],
    watcher: Watcher | None = None,
    stop: Callable[[], bool] | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    after: Callable[[int], None] | None = None,
    storage: Any = None,
) -> Ran:
    """Run trials of ``study`` one at a time until ``next_step()`` says ``"stop"`` (or ``stop()``).

    Safe in several processes against one storage. Each round holds the study's start lock
    (:mod:`deepsc_tune.study._start_lock`) while it fails and re-queues the trials of dead workers
    (this host's at once, others' after the heartbeat grace period, and interrupted trials whose
    retry was lost) and asks ``next_step`` (``"wait"``: the last trials are running elsewhere and
    one may still fail and come back); the lock is freed once the trial is RUNNING. ``after`` is
    called with each trial's number once it ended (and may raise to stop the runner). The
    study file is checked between trials (:func:`check_study_file_unchanged`). Interruptions,
    a full disk and a lost database end the loop as :func:`run_one_trial` says. ``storage``: the
    study's storage when it was not opened by :func:`~deepsc_tune.study._storage.open_storage`'s callers.
    """
    storage = storage if storage is not None else storage_of(study)
    lock = start_lock(storage, study.study_name)  # a no-op lock without a database storage
    ran = Ran()

    def started(trial: optuna.trial.Trial) -> None:
        ran.trials.append(trial.number)
        lock.release()  # RUNNING now: it counts for every worker

    while stop is None or not stop():
        check_study_file_unchanged(storage)
        lock.acquire()
        try:
            # Under the lock, so that two workers never fail and re-queue the same trial twice.
            ran.recovered += _recover(study, storage, watcher)
            step = next_step()
            if step == "stop":
                break
            if step == "wait":
                lock.release()
                time.sleep(POLL_SECONDS)
                continue
            try:
                taken = run_one_trial(study, objective, callbacks=callbacks, on_start=started)
            except KeyboardInterrupt:
                if watcher is not None:
                    watcher.close()
                raise
        finally:
            lock.release()
        if taken is not None:
            ran.trials.remove(taken)  # another worker runs it again
            if watcher is not None:
                watcher.taken_over(taken)
        elif after is not None and ran.trials:
            after(ran.trials[-1])
    check_study_file_unchanged(storage)
    return ran


def _recover(study: optuna.Study, storage: Any, watcher: Watcher | None) -> list[int]:
    found = recover_orphaned_trials(study, storage) if storage is not None else []
    if found and watcher is not None:
        watcher.recovered(found)
    lost = requeue_lost_retries(study)
    if lost and watcher is not None:
        watcher.requeued(lost)
    fail_stale_trials(study)
    return found + lost


def run_one_trial(
    study: optuna.Study,
    objective: Callable[[optuna.trial.Trial], float],
    *,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    on_start: Callable[[optuna.trial.Trial], None] | None = None,
) -> int | None:
    """One ``study.optimize(n_trials=1)``, as every runner (search, confirmation, repeats) needs it.

    ``on_start`` is called once the trial is RUNNING. An interruption (:mod:`deepsc_tune.utils._interrupts`:
    Ctrl-C, SIGTERM, a closed stdout) is passed on after the objective has recorded the trial as
    FAIL with its reason and its settings are re-queued here, tagged ``retry_of``.

    Returns the number of a trial that was taken over while it ran, else ``None``: a worker
    suspended (SLURM's SIGSTOP) for longer than the heartbeat grace period finds its trial failed
    and re-queued by another worker when it continues; Optuna then refuses to record it, and
    this worker drops its result and carries on. A full disk is raised as
    :class:`~deepsc_tune.utils._disk.DiskFull` (the trial re-queued). A database that did not come back in time
    (:mod:`deepsc_tune.study._reconnect`) is raised as :class:`~deepsc_tune.study._reconnect.DatabaseUnreachable`.
    """
    current: list[int] = []

    def tracked(trial: optuna.trial.Trial) -> float:
        current[:] = [trial.number]
        if on_start is not None:
            on_start(trial)
        return objective(trial)

    full_disk = FullDiskStop(study)  # a full disk stops the runner (DiskFull), not trial after trial
    try:
        with full_disk.optimizing():
            study.optimize(full_disk.objective(tracked), n_trials=1, catch=(Exception,), callbacks=list(callbacks))
    except KeyboardInterrupt as e:
        if current:
            requeue_interrupted(study, current[0], interrupt_reason(e), storage=storage_of(study))
        raise
    except Exception as e:
        lost = unreachable_in(e)
        if lost is not None:  # the database did not come back: say that, not how Optuna failed
            raise lost from None
        # "Cannot tell a FAIL trial": someone else finished it while this process was stopped.
        taken = isinstance(e, (ValueError, optuna.exceptions.UpdateFinishedTrialError))
        if taken and current and _finished_elsewhere(study, current[0]):
            return current[0]
        raise
    return None


def _finished_elsewhere(study: optuna.Study, number: int) -> bool:
    """Whether trial ``number``, which this process was running, was failed by another one.

    The objective records a reason before a trial of its own fails; a stale-heartbeat FAIL by
    another worker has none (the reason is on the retry)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number == number:
            return FAIL_REASON not in trial.user_attrs
    return False


class FullDiskStop:
    """Stops a loop of ``study.optimize(n_trials=1)`` calls at the first full disk.

    Optuna records any exception of a trial as FAIL and goes on, so a full disk would fail
    every further trial. Wrap the objective with :meth:`objective` and each ``optimize`` call
    with :meth:`optimizing`: after a trial that a full disk stopped, the trial's settings are
    re-queued (when the disk still lets the study record that; else it stays RUNNING and the
    next run on this host re-queues it at once) and :class:`DiskFull` is raised.
    """

    def __init__(self, study: Any) -> None:
        storage = storage_of(study)  # the study file is named when deepsc-tune opened the study
        self.study = study
        self.db = sqlite_file(storage.url) if isinstance(storage, RDBStorage) else None
        self.number: int | None = None
        self.error: DiskFull | None = None

    def objective(self, objective: Callable[[Any], float]) -> Callable[[Any], float]:
        def watched(trial: Any) -> float:
            self.number = trial.number
            try:
                return objective(trial)
            except Exception as e:
                self.error = disk_full(e, self.db)
                raise

        return watched

    @contextlib.contextmanager
    def optimizing(self) -> Iterator[None]:
        self.number, self.error = None, None
        try:
            yield
        except Exception as e:
            # Optuna could not even record the trial's end (it stays RUNNING), or asked for none.
            self.error = disk_full(e, self.db)
            if self.error is None:
                raise
        if self.error is not None:
            raise self._stopped() from None

    def _stopped(self) -> DiskFull:
        assert self.error is not None
        if self.number is None:
            return DiskFull(self.error.path, "no trial was running; ")
        what = f"trial {self.number} was stopped (the next run re-queues it); "
        try:
            trial = next(t for t in self.study.get_trials(deepcopy=False) if t.number == self.number)
            if trial.state == TrialState.FAIL:
                requeue(self.study, trial, "disk full")
                what = f"trial {self.number} was stopped and its settings re-queued; "
        except Exception:  # noqa: BLE001 - the disk is full: say that, not this
            pass
        return DiskFull(self.error.path, what)
