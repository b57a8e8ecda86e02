"""Trials whose worker died: mark them FAIL with a reason and queue their settings again.

Two ways to tell a worker is dead. Heartbeats catch it anywhere, after a grace period: Optuna
fails the trial (:func:`fail_stale_trials`) and calls :func:`requeue_stale_trial`, the storage's
``heartbeat_stale_trial_callback`` (:func:`~deepsc_tune.study._storage.open_storage` sets it). A trial
started on this host by a process that no longer exists is known dead at once
(:func:`recover_orphaned_trials`). An interrupted trial is recorded FAIL, then re-queued: two
writes, so a process killed between them leaves the FAIL without its retry;
:func:`requeue_lost_retries` finds those and queues them.

A retry is a WAITING trial queued with ``study.enqueue_trial`` and tagged ``retry_of``,
``retry_reason`` and ``retry_count`` (keeping a repeat's ``repeat_of``/``repeat_seed`` and a guide
configuration's ``enqueued``). Optuna's ``RetryFailedTrialCallback`` and
``RetryHeartbeatStaleTrialCallback`` do not fit this record: they copy every user attribute of
the failed trial into the retry (its worker, settings, epochs run and duration, which the retry
would show while it waits) and keep the lineage in system attributes that the report, ``status``
and ``trials.csv`` do not read; they also count retries by ``max_retry`` per chain, as
``MAX_RETRIES`` does here.
"""

from __future__ import annotations

import socket
import warnings

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.study._trial_record import (
    ENQUEUED,
    FAIL_REASON,
    REPEAT_OF,
    REPEAT_SEED,
    RETRY_COUNT,
    RETRY_OF,
    RETRY_REASON,
    STALE_REASON,
    worker_of,
)
from deepsc_tune.utils import CAUSES, SIGINT, process_start_time

#: A configuration whose worker keeps dying is not retried forever.
MAX_RETRIES = 3
#: How the FAIL reason of an interrupted trial starts (``interrupted``, ``interrupted (SIGTERM)``, ...).
INTERRUPTED = CAUSES[SIGINT][1]
#: What a retry keeps of the trial it retries.
KEPT_ON_RETRY = (REPEAT_OF, REPEAT_SEED, ENQUEUED)


def requeue(study: optuna.Study, trial: FrozenTrial, reason: str) -> None:
    """Queue ``trial``'s parameters again, tagged as its retry."""
    user_attrs = {
        RETRY_OF: trial.number,
        RETRY_REASON: reason,
        RETRY_COUNT: trial.user_attrs.get(RETRY_COUNT, 0) + 1,
    }
    for key in KEPT_ON_RETRY:
        if key in trial.user_attrs:
            user_attrs[key] = trial.user_attrs[key]
    study.enqueue_trial(trial.params, user_attrs=user_attrs, skip_if_exists=False)


def requeue_stale_trial(study: optuna.Study, trial: FrozenTrial) -> None:
    """Optuna's ``heartbeat_stale_trial_callback``: re-queue a trial whose worker stopped beating.

    Optuna has already marked it FAIL (killed worker, preempted node); the retry carries
    ``retry_of`` and the reason so reports can tell why the original failed.
    """
    if trial.user_attrs.get(RETRY_COUNT, 0) >= MAX_RETRIES:
        return
    requeue(study, trial, STALE_REASON)


def recover_orphaned_trials(study: optuna.Study, storage: BaseStorage) -> list[int]:
    """Fail and re-queue RUNNING trials whose worker on this host is gone.

    ``storage``: the storage the study was opened on. Heartbeats catch dead workers anywhere,
    but only after a grace period; a trial started on this host by a process that no longer
    exists is known dead at once.
    """
    host = socket.gethostname()
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = worker_of(trial)
        if worker is None or worker.host != host or not worker.pid:
            continue
        started = process_start_time(worker.pid)
        if started is not None and started == worker.started:
            continue  # that worker is alive
        reason = f"worker process {worker.pid} on {host} died while the trial ran"
        fail_trial(study, trial, reason, storage=storage)
        recovered.append(trial.number)
    return recovered


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and, through the storage's callback, re-queue) trials whose heartbeats stopped.

    Does nothing on a storage without heartbeats.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_trial(
    study: optuna.Study, trial: FrozenTrial, reason: str, *, storage: BaseStorage, retry: bool = True
) -> None:
    """Mark a RUNNING trial of another (dead) process FAIL with ``reason`` and re-queue its
    parameters. ``storage``: the storage the study was opened on."""
    tid = trial_id(storage, study, trial.number)
    try:
        storage.set_trial_user_attr(tid, FAIL_REASON, reason)
        changed = storage.set_trial_state_values(tid, TrialState.FAIL)
    except RuntimeError:  # finished meanwhile
        return
    if changed and retry and trial.user_attrs.get(RETRY_COUNT, 0) < MAX_RETRIES:
        requeue(study, trial, reason)


def requeue_lost_retries(study: optuna.Study) -> list[int]:
    """Re-queue interrupted trials (FAIL, ``interrupted...``) that have no retry; their numbers.

    Call it under the start lock (as :func:`recover_orphaned_trials`), so that two workers never
    queue the same retry twice. A trial already retried ``MAX_RETRIES`` times is left alone.
    """
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    lost = [
        t
        for t in trials
        if t.state == TrialState.FAIL
        and str(t.user_attrs.get(FAIL_REASON, "")).startswith(INTERRUPTED)
        and t.number not in retried
        and t.user_attrs.get(RETRY_COUNT, 0) < MAX_RETRIES
    ]
    for trial in lost:
        requeue(study, trial, trial.user_attrs[FAIL_REASON])
    return [t.number for t in lost]


def trial_id(storage: BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study`` (what ``storage``'s trial methods take)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study.study_name), number)


def requeue_interrupted(
    study: optuna.Study, number: int, reason: str = "interrupted", *, storage: BaseStorage | None = None
) -> None:
    """Re-queue trial ``number`` of this process once an interruption has made it FAIL.

    ``storage``: the one the study was opened on, read directly: the study's own cached view
    may still show the trial RUNNING when another worker wrote meanwhile. A trial the
    interruption left RUNNING (it came before Optuna could record the end) is failed here.
    """
    if storage is None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    else:
        trials = [storage.get_trial(trial_id(storage, study, number))]
    for trial in trials:
        if trial.state == TrialState.RUNNING and storage is not None:
            fail_trial(study, trial, reason, storage=storage)  # fails and re-queues it
        elif trial.state == TrialState.FAIL:
            requeue(study, trial, reason)
