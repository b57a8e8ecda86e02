"""The persistent Optuna study: create or resume it, and run trials until the target.

Running the same command again resumes: finished trials are kept, trials a dead process left
RUNNING are marked FAIL with a reason and their parameters re-queued (:mod:`deepsc_tune.study._recovery`),
and work continues until the study holds ``n_trials`` finished (complete or pruned) search
trials. Where the study lives: :mod:`deepsc_tune.study._storage`; the lock that keeps workers from
overshooting the target: :mod:`deepsc_tune.study._start_lock`; what a worker prints:
:mod:`deepsc_tune.cli._progress`; what a trial records: :mod:`deepsc_tune.study._trial_record`.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from deepsc_tune import __version__
from deepsc_tune.backends import Finetuner
from deepsc_tune.config import SearchSpace
from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.study._folder import StudyFolder
from deepsc_tune.study._objective import build_objective
from deepsc_tune.study._pruning import spare, sparing_pruner
from deepsc_tune.study._reseed import SHARED_SEED_SAMPLERS, seeded_per_trial
from deepsc_tune.study._runner import Step, Watcher, run_trials
from deepsc_tune.study._space_record import read_record, sqlite_folder, summary_attrs, write_record
from deepsc_tune.study._storage import redact, remember
from deepsc_tune.study._trial_record import (
    BACKEND,
    CREATED_ON,
    DATA_FINGERPRINT,
    DEEPSC_TUNE_VERSION,
    ENQUEUED,
    METRIC,
    N_TRIALS,
    OPTUNA_VERSION,
    SEARCH_SPACE_NAME,
    SEARCH_SPACE_PATH,
    SEARCH_SPACE_SHA256,
    count_states,
    failure_reason,
    n_finished,
    other_data,
)


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
    """The space's sampler, seeded per trial number (:mod:`deepsc_tune.study._reseed`) and per worker.

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
    record_dir: StudyFolder | Path | None = None,
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
    sampler, pruner = build_study_sampler(space, worker), sparing_pruner(space)
    record_dir = record_dir or sqlite_folder(storage)
    if isinstance(storage, str):
        storage = RDBStorage(storage)  # what Optuna would make of the URL, kept for storage_of()
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
    remember(study, storage)
    if created:
        _describe_new_study(study, space, data_fingerprint)
        write_record(record_dir, space)
        return study
    # Another worker may have created it a moment ago and be writing its description.
    for _ in range(50):
        if SEARCH_SPACE_SHA256 in study.user_attrs:
            break
        time.sleep(0.1)
    _check_same_study(study, space, study_name, data_fingerprint, record_dir=record_dir)
    if study.user_attrs.get(N_TRIALS) != space.n_trials:
        study.set_user_attr(N_TRIALS, space.n_trials)
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
        SEARCH_SPACE_NAME: space.name,
        SEARCH_SPACE_PATH: str(space.path) if space.path else None,
        # The text and configuration go beside the study (study/_space_record.py): attributes stay short.
        SEARCH_SPACE_SHA256: space.sha256,
        **summary_attrs(space),
        METRIC: space.metric,
        N_TRIALS: space.n_trials,
        BACKEND: space.backend,
        DEEPSC_TUNE_VERSION: __version__,
        OPTUNA_VERSION: optuna.__version__,
        DATA_FINGERPRINT: data_fingerprint,
        CREATED_ON: socket.gethostname(),
    }
    _set_metric_name(study, space.metric)
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    for params in space.enqueue:
        study.enqueue_trial(params, user_attrs={ENQUEUED: True}, skip_if_exists=True)


def _check_same_study(
    study: optuna.Study,
    space: SearchSpace,
    study_name: str,
    data_fingerprint: str | None,
    *,
    record_dir: StudyFolder | Path | None = None,
) -> None:
    stored = study.user_attrs
    how = f"start a new study with --study-name {study_name}-2 (or another name), or restore the original settings"
    if stored.get(SEARCH_SPACE_SHA256) not in (None, space.sha256):
        record = read_record(stored, record_dir)
        changed = _changed_keys(record["config"], space.config) if record else []
        what = f" (changed: {', '.join(changed[:6])})" if changed else ""
        raise ConfigError(
            f"study '{study_name}' was made from a different search space{what}; refusing to mix results: {how}"
        )
    fp = other_data(stored, data_fingerprint)
    if fp:
        raise ConfigError(
            f"study '{study_name}' was run on different data (fingerprint {fp[:12]} vs "
            f"{data_fingerprint[:12]}: a data file changed); refusing to mix results: {how}"
        )


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    from deepsc_tune.config import NEUTRAL_KEYS

    ignore = {*NEUTRAL_KEYS, "name", "description", "source"}
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


def run_study(
    space: SearchSpace,
    finetuner: Finetuner,
    *,
    study: optuna.Study,
    trials_dir: Path | None = None,
    progress: Watcher | None = None,
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
    StudyFileGone
        When the study's SQLite file was deleted or replaced meanwhile (checked between trials
        and before returning).
    KeyboardInterrupt
        (:class:`~deepsc_tune.utils._interrupts.Interrupted`: Ctrl-C, SIGTERM, a closed stdout) Passed
        on after the running trial has been recorded as FAIL with the reason and its parameters
        re-queued.
    DiskFull
        When a full disk stopped a trial (:class:`~deepsc_tune.study._runner.FullDiskStop`).
    """
    objective = build_objective(
        space,
        finetuner,
        trials_dir=trials_dir,
        on_epoch=progress.epoch if progress else None,
    )
    spare(study, space)  # the rule holds for a study loaded elsewhere too
    target = space.n_trials
    failures = [0]

    def next_step() -> Step:
        counts = count_states(study)
        finished = n_finished(counts)
        if finished >= target:
            return "stop"
        # Others hold the last trials; one of them may still fail and come back. A queued
        # trial (a retry) waits too: starting it would overshoot the target.
        return "wait" if finished + counts[TrialState.RUNNING] >= target else "start"

    def after(number: int) -> None:
        last = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        if last.state != TrialState.FAIL:
            failures[0] = 0
            return
        failures[0] += 1
        if failures[0] >= space.max_failures:
            raise TooManyFailures(
                f"stopped after {failures[0]} failed trials in a row "
                f"(study.max_failures={space.max_failures}); last: trial {last.number}: "
                f"{(failure_reason(last) or '').splitlines()[0][:300]}"
            )

    callbacks = [progress.trial_done] if progress else []
    ran = run_trials(
        study, objective, next_step=next_step, watcher=progress, stop=stop, callbacks=callbacks, after=after
    )
    return RunSummary(
        study=study,
        ran=len(ran.trials),
        recovered=ran.recovered,
        finished=n_finished(count_states(study)),
        target=target,
    )


def load_existing_study(*, storage: RDBStorage, study_name: str, run_args: str | None = None) -> optuna.Study:
    """Load a study for reading, with a clear error when it does not exist (``run_args``: what
    names it on the command line, e.g. ``pbmc68k --study-name pbmc68k-lr``; default the study's name)."""
    try:
        return remember(optuna.load_study(study_name=study_name, storage=storage), storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise DeepscTuneError(
            f"no study '{study_name}' in {redact(storage.url)}; "
            f"studies there: {', '.join(names) or '(none)'}; run `deepsc-tune run {run_args or study_name}` first"
        ) from None
