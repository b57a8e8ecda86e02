"""The one rule deepsc-tune adds to the user's pruner: never prune a repeat, never at the last epoch.

:class:`SparingPruner` wraps the pruner of ``study.pruner`` the way Optuna's own
:class:`optuna.pruners.PatientPruner` wraps another: it answers ``False`` where the rule says so
and asks the wrapped pruner otherwise. Every study deepsc-tune opens gets it
(:func:`~deepsc_tune.study._study.open_study`), and every runner makes sure of it before its first
trial (:func:`spare`), so the search, ``repeat`` and ``study.confirm`` share one rule.

- A repeat (``repeat_of``: ``deepsc-tune repeat``, ``study.confirm``) re-runs a known
  configuration with another seed to measure its full curve: stopping it would defeat it.
- After the last epoch nothing is left to save, and pruning would hide a finished result
  (a PRUNED trial instead of a COMPLETE one).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna
from optuna.pruners import BasePruner
from optuna.trial import FrozenTrial

from deepsc_tune.config import SearchSpace
from deepsc_tune.study._trial_record import prunable


class SparingPruner(BasePruner):
    """``wrapped``, except for repeats and at or after a trial's last epoch.

    Parameters
    ----------
    wrapped
        The study's pruner (``None``: never prune).
    last_epoch
        A trial's number of epochs (its ``epoch`` setting), or ``None`` when it is not known.
    """

    def __init__(self, wrapped: BasePruner | None, last_epoch: Callable[[FrozenTrial], int | None]) -> None:
        self.wrapped = wrapped
        self.last_epoch = last_epoch

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.wrapped is None or not prunable(trial):
            return False
        step, last = trial.last_step, self.last_epoch(trial)
        if step is None or (last is not None and step >= last):
            return False
        return self.wrapped.prune(study, trial)


def sparing_pruner(space: SearchSpace, wrapped: BasePruner | None = None) -> SparingPruner:
    """``study.pruner`` of ``space`` (or ``wrapped``), sparing repeats and last epochs (a trial's
    ``epoch`` setting: fixed, or searched)."""

    def last_epoch(trial: FrozenTrial) -> int | None:
        epoch = space.settings_for(trial.params).get("epoch")
        return int(epoch) if isinstance(epoch, (int, float)) else None

    return SparingPruner(wrapped if wrapped is not None else space.build_pruner(), last_epoch)


def spare(study: optuna.Study, space: SearchSpace) -> None:
    """Make sure the pruner of ``study`` follows the rule, also for a study its caller loaded
    with plain ``optuna.load_study`` (every runner calls this before its first trial)."""
    if not isinstance(study.pruner, SparingPruner):
        study.pruner = sparing_pruner(space, wrapped=study.pruner)
