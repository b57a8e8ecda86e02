"""``deepsc-tune repeat``: run the best configurations again with other seeds.

Repeats are ordinary trials of the same study, queued with ``study.enqueue_trial`` and tagged
``repeat_of`` (the original trial's number) and ``repeat_seed`` (the objective then overrides the
``seed`` setting). ``study.search_trials`` leaves them out, so they never count towards the
search's ``n_trials`` and never shape the frontier; :mod:`deepsc_tune.study._selection` ranks a
configuration by the mean over its search trial and repeats (``best``, export, report).
``study.confirm`` (:mod:`deepsc_tune.study._confirm`) runs the same plan automatically after a search.

A repeat is *done* when a trial with its ``(repeat_of, repeat_seed)`` is WAITING, RUNNING or
COMPLETE; a FAIL or PRUNED one is planned again, so running the same command twice adds nothing
and running it after a crash finishes what is missing. An interrupted repeat is re-queued at once;
one left RUNNING by a killed process is failed and re-queued by the next call
(:func:`recover_dead_repeats`), as ``run`` does.

A search running at the same time may pick queued repeats up (its workers take the oldest
WAITING trial); they then run under that worker's pruner. Run ``repeat`` after the search, or
run it again afterwards to complete what was pruned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.backends import Finetuner
from deepsc_tune.config import SearchSpace
from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.study._folder import StudyFolder
from deepsc_tune.study._objective import build_objective
from deepsc_tune.study._pruning import spare
from deepsc_tune.study._recovery import fail_stale_trials, recover_orphaned_trials, requeue_lost_retries
from deepsc_tune.study._runner import Step, Watcher, run_trials
from deepsc_tune.study._selection import rank_configurations
from deepsc_tune.study._space_record import space_from_study, sqlite_folder
from deepsc_tune.study._storage import open_storage, storage_of
from deepsc_tune.study._study import load_existing_study, open_study
from deepsc_tune.study._trial_record import (
    REPEAT_OF,
    REPEAT_SEED,
    is_repeat,
    other_data,
    seed_of,
)

#: States in which a planned repeat counts as done or under way.
DONE_STATES = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
#: Seed used for a trial that recorded none (the fine-tuners' own default is 0 or 42; only the
#: difference between the original and its repeats matters).
DEFAULT_SEED = 0


class RepeatPlan(NamedTuple):
    """One repeat to queue: the configuration of trial ``repeat_of``, run with ``seed``."""

    repeat_of: int
    params: dict[str, Any]
    seed: int


class RepeatSummary(NamedTuple):
    """What :func:`run_repeats` ran."""

    repeats: list[int]  # numbers of the repeat trials run
    search: list[int]  # search trials that were queued ahead of the repeats and ran first
    failed: list[int]  # repeats that ended FAIL


def trial_seed(trial: FrozenTrial, fixed: Mapping[str, Any] | None = None) -> int:
    """The seed ``trial`` ran with (:func:`~deepsc_tune.study._trial_record.seed_of`, ``fixed``:
    the search space's fixed settings), else the fine-tuners' default."""
    seed = seed_of(trial, fixed)
    return DEFAULT_SEED if seed is None else seed


def top_trials(trials: Sequence[FrozenTrial], *, top: int) -> list[FrozenTrial]:
    """The ``top`` best configurations' search trials with distinct parameters (best first, in
    the selection's ranking)."""
    ranked = [c.trial for c in rank_configurations(trials)]
    chosen: list[FrozenTrial] = []
    seen: list[dict[str, Any]] = []
    for t in ranked:
        if t.params in seen:  # the same configuration sampled twice: repeat it once
            continue
        seen.append(dict(t.params))
        chosen.append(t)
        if len(chosen) == top:
            break
    return chosen


def plan_repeats(trials: Sequence[FrozenTrial], *, top: int, seeds: int, fixed: Mapping[str, Any]) -> list[RepeatPlan]:
    """Repeats still needed so that each of the ``top`` best configurations has ``seeds`` more seeds
    (``fixed``: the search space's fixed settings, whose ``seed`` the search trials ran with).

    The extra seeds of a trial that ran with seed ``s`` are ``s+1 ... s+seeds``, so asking for
    more seeds later only adds the new ones. Repeats already WAITING, RUNNING or COMPLETE are
    left out.

    Raises
    ------
    ConfigError
        When ``top`` or ``seeds`` is below 1.
    DeepscTuneError
        When no search trial has completed yet.
    """
    if top < 1 or seeds < 1:
        raise ConfigError(f"--top {top} --seeds {seeds}: both must be 1 or more")
    chosen = top_trials(trials, top=top)
    if not chosen:
        raise DeepscTuneError(
            f"no completed search trial to repeat yet ({len(trials)} trials in all); "
            "let `deepsc-tune run` complete some first"
        )
    done = {
        (int(t.user_attrs[REPEAT_OF]), int(t.user_attrs[REPEAT_SEED]))
        for t in trials
        if is_repeat(t) and t.state in DONE_STATES and t.user_attrs.get(REPEAT_SEED) is not None
    }
    plan = []
    for t in chosen:
        base = trial_seed(t, fixed)
        for seed in range(base + 1, base + seeds + 1):
            if (t.number, seed) not in done:
                plan.append(RepeatPlan(t.number, dict(t.params), seed))
    return plan


def enqueue_repeats(study: optuna.Study, plan: Sequence[RepeatPlan]) -> None:
    """Queue each planned repeat as a WAITING trial tagged ``repeat_of`` and ``repeat_seed``."""
    for item in plan:
        study.enqueue_trial(
            item.params,
            user_attrs={REPEAT_OF: item.repeat_of, REPEAT_SEED: item.seed},
            skip_if_exists=False,  # same parameters as the original on purpose
        )


def open_for_repeats(
    *, storage: str, study_name: str, record_dir: StudyFolder | Path | None = None
) -> tuple[optuna.Study, SearchSpace]:
    """Open the existing study for writing, as ``run`` opens it (:func:`open_study`: heartbeats
    on, its sampler and its pruner, which never stops a repeat), with the search space it was
    made from.

    Raises
    ------
    DeepscTuneError
        When the study does not exist or holds no search space.
    """
    rdb = open_storage(storage)
    record_dir = record_dir or sqlite_folder(storage)
    space = space_from_study(load_existing_study(storage=rdb, study_name=study_name), record_dir=record_dir)
    return open_study(space, storage=rdb, study_name=study_name, record_dir=record_dir), space


def recover_dead_repeats(study: optuna.Study) -> list[int]:
    """Fail and re-queue trials left RUNNING by a killed process (as ``run`` does on resume).

    Call it before :func:`plan_repeats`, which counts a RUNNING repeat as under way: a repeat
    whose process was killed is then re-queued (keeping ``repeat_of``/``repeat_seed``) instead
    of missing for good. Returns the numbers of the trials re-queued on this host.
    """
    storage = storage_of(study)
    found = recover_orphaned_trials(study, storage) if storage is not None else []
    fail_stale_trials(study)  # other hosts' dead workers, after the heartbeat grace period
    return found + requeue_lost_retries(study)


def check_same_data(study: optuna.Study, fingerprint: str | None) -> None:
    """Refuse to repeat on data other than the study's (a data file changed since the search).

    Raises
    ------
    ConfigError
        When both fingerprints are known and differ.
    """
    stored = other_data(study.user_attrs, fingerprint)
    if stored:
        raise ConfigError(
            f"study '{study.study_name}' was run on different data "
            f"(fingerprint {stored[:12]} vs {fingerprint[:12]} now): repeats would not be comparable"
        )


def waiting_repeats(study: optuna.Study) -> list[FrozenTrial]:
    """Repeats queued and not yet taken by a worker."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) if is_repeat(t)]


def run_repeats(
    study: optuna.Study,
    space: SearchSpace,
    finetuner: Finetuner,
    *,
    trials_dir: Path | None = None,
    progress: Watcher | None = None,
    stop: Callable[[], bool] | None = None,
    storage: Any = None,
) -> RepeatSummary:
    """Run queued trials, one ``study.optimize(n_trials=1)`` at a time, until no repeat is waiting.

    Optuna runs the oldest WAITING trial first, so search trials queued earlier (the usage
    guide's configurations, retries) run first, as they would in ``deepsc-tune run``.
    An interruption (``KeyboardInterrupt``: Ctrl-C, SIGTERM, a closed stdout) is passed on
    after the running trial is recorded FAIL with the reason and re-queued (tagged ``retry_of``,
    keeping ``repeat_of`` and ``repeat_seed``), so running the command again runs it.
    """
    objective = build_objective(space, finetuner, trials_dir=trials_dir, on_epoch=progress.epoch if progress else None)
    spare(study, space)  # the rule holds for a study loaded elsewhere too
    callbacks = [progress.trial_done] if progress else []

    def next_step() -> Step:
        return "start" if waiting_repeats(study) else "stop"

    ran = run_trials(
        study, objective, next_step=next_step, watcher=progress, stop=stop, callbacks=callbacks, storage=storage
    ).trials
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    repeats = [n for n in ran if is_repeat(by_number[n])]
    return RepeatSummary(
        repeats=repeats,
        search=[n for n in ran if not is_repeat(by_number[n])],
        failed=[n for n in repeats if by_number[n].state == TrialState.FAIL],
    )
