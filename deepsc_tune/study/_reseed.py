"""A sampler seeded per trial number, so that every continuation of a study explores.

Optuna's seeded samplers draw from one random stream that starts again in every process. A
study resumed (``deepsc-tune run`` again, a raised ``study.n_trials``) or a second process on
the same SQLite study therefore replays the first process's draws: TPE's random start-up
trials, and with them (same history, same draws) its later proposals too. Here the sampler is
rebuilt for each trial with a seed derived from the study's seed and the trial's number. Trial
numbers are handed out by the storage, so

- a seeded single-process run from scratch is reproducible (trial ``n`` always gets the same
  seed and sees the same history);
- a continuation proposes new settings: its trials have new numbers, so new seeds;
- two processes on one study never draw with the same seed (the storage never gives two trials
  one number).

Not reproducible: several workers at once (which worker finishes first decides the history a
proposal is based on). QMC is left alone: its sequence index already lives in the study, and
every worker must share one seed (Optuna's rule).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

#: Samplers whose seed must not change between trials or workers.
SHARED_SEED_SAMPLERS = ("qmc",)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for trial ``number`` of a study seeded with ``seed`` (stable everywhere)."""
    return (int(seed) + zlib.crc32(f"trial-{number}".encode())) % 2**32


class PerTrialSeedSampler(BaseSampler):
    """Wraps a seeded sampler: each trial gets ``build(trial_seed(seed, trial.number))``.

    The inner sampler keeps no state worth keeping between trials (TPE, random, grid, GP and
    CMA-ES read everything they learn from the study's trials), so rebuilding it per trial only
    changes where its random numbers start.
    """

    def __init__(self, build: Callable[[int], BaseSampler], seed: int) -> None:
        self._build = build
        self._seed = int(seed)
        self._number: int | None = None
        self._inner = build(self._seed)

    @property
    def inner(self) -> BaseSampler:
        """The sampler of the current trial."""
        return self._inner

    def _for(self, trial: FrozenTrial) -> BaseSampler:
        if trial.number != self._number:
            self._inner = self._build(trial_seed(self._seed, trial.number))
            self._number = trial.number
        return self._inner

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._for(trial).before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._for(trial).after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._inner.reseed_rng()


def seeded_per_trial(kind: str, seed: int | None, build: Callable[[int | None], BaseSampler]) -> BaseSampler:
    """``build(seed)``, wrapped in :class:`PerTrialSeedSampler` when seeded and the kind allows."""
    if seed is None or kind in SHARED_SEED_SAMPLERS:
        return build(seed)
    return PerTrialSeedSampler(build, seed)


__all__ = ["SHARED_SEED_SAMPLERS", "PerTrialSeedSampler", "seeded_per_trial", "trial_seed"]
