"""``study.confirm``: once the search target is reached, re-run its best configurations.

``study.confirm: {top: K, seeds: N}`` makes ``deepsc-tune run`` queue, after the search's
``n_trials`` have finished, the K best configurations with N new seeds each, with the machinery
of ``deepsc-tune repeat`` (:mod:`deepsc_tune.study._repeat`): WAITING trials tagged ``repeat_of`` and
``repeat_seed``, never pruned, never counted as search trials. Selection (:mod:`deepsc_tune.study._selection`)
then ranks configurations by their mean over seeds.

- **Shared by workers.** Planning and enqueueing happen under the study's start lock, so two
  workers that reach the target together queue each repeat once; every worker then takes queued
  repeats (checking for one and starting it under the same lock, so a worker never starts a fresh
  search trial because the queue emptied in between) until none is waiting.
- **Resumable and idempotent.** A repeat counts as done when a trial with its ``(repeat_of,
  repeat_seed)`` is WAITING, RUNNING or COMPLETE (:func:`~deepsc_tune.study._repeat.plan_repeats`); an
  interrupted one is re-queued at once, one left RUNNING by a killed process is re-queued by
  the next ``run`` (:mod:`deepsc_tune.study._recovery`), a failed one is planned again, and a ``run``
  of a confirmed study adds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState

from deepsc_tune.backends import Finetuner
from deepsc_tune.config import SearchSpace
from deepsc_tune.study._repeat import enqueue_repeats, plan_repeats, run_repeats
from deepsc_tune.study._runner import Watcher
from deepsc_tune.study._selection import select
from deepsc_tune.study._start_lock import start_lock


class ConfirmSummary(NamedTuple):
    """What :func:`run_confirmation` queued and ran in this process."""

    queued: int  # repeats this process added to the queue
    ran: list[int]  # numbers of the repeat trials this process ran
    failed: list[int]  # of those, the ones that ended FAIL


def run_confirmation(
    space: SearchSpace,
    finetuner: Finetuner,
    *,
    study: optuna.Study,
    storage: Any = None,
    trials_dir: Path | None = None,
    progress: Watcher | None = None,
    stop: Callable[[], bool] | None = None,
) -> ConfirmSummary | None:
    """Queue the repeats ``space.confirm`` asks for and run queued repeats until none is waiting.

    Call it after :func:`~deepsc_tune.study._study.run_study` has returned (the search target is
    reached). ``storage`` is the study's storage (for the start lock shared with other workers;
    ``None``: this process is alone). Returns ``None`` when ``study.confirm`` is off.

    An interruption (``KeyboardInterrupt``: Ctrl-C, SIGTERM, a closed stdout) is passed on
    after the running repeat is recorded FAIL and re-queued; the next run takes it up.
    """
    if not space.confirm:
        return None
    lock = start_lock(storage, study.study_name)  # a no-op lock without a database storage
    lock.acquire()
    try:
        trials = study.get_trials(deepcopy=False)
        queued = 0
        if select(trials).best is not None:
            plan = plan_repeats(trials, top=space.confirm["top"], seeds=space.confirm["seeds"], fixed=space.fixed)
            enqueue_repeats(study, plan)
            queued = len(plan)
    finally:
        lock.release()

    done = run_repeats(study, space, finetuner, trials_dir=trials_dir, progress=progress, stop=stop, storage=storage)
    ran = sorted(done.repeats + done.search)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    return ConfirmSummary(
        queued=queued,
        ran=ran,
        failed=[n for n in ran if states.get(n) == TrialState.FAIL],
    )
