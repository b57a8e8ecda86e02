"""``finetune.keep_checkpoints`` applied to a study: the chosen configuration's checkpoints stay.

After every trial (a study callback, and once more when a run ends) :class:`CheckpointKeeper`
removes the checkpoints of finished trials that cannot be the choice any more: with ``best``
(default) every finished trial outside the chosen configuration
(:func:`deepsc_tune.study._selection.select`: its search trial and repeats, by the mean over
seeds), with ``none`` every finished trial's, with ``all`` none. Which files a trial has, and
that only DeepSC's own names are ever removed: :mod:`deepsc_tune.backends.command.deepsc`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from deepsc_tune.backends.command.deepsc import DEFAULT_KEEP, KEEP_POLICIES, recorded
from deepsc_tune.study._folder import trial_dir
from deepsc_tune.study._selection import select

#: Trial states whose checkpoints may go (running and queued trials are never touched).
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


class Pruned(NamedTuple):
    """What one :meth:`CheckpointKeeper.prune` removed."""

    files: int
    bytes: int
    trials: tuple[int, ...]


class CheckpointKeeper:
    """Applies ``keep_checkpoints`` to a study's trials (``trials_dir/NNNNN`` are their folders)."""

    def __init__(self, study: Any, trials_dir: Path, policy: str = DEFAULT_KEEP) -> None:
        if policy not in KEEP_POLICIES:
            raise ValueError(f"keep_checkpoints: expected one of {', '.join(KEEP_POLICIES)}, got {policy!r}")
        self.study, self.trials_dir, self.policy = study, Path(trials_dir), policy

    def keep(self, trials: Sequence[Any]) -> set[int]:
        """Numbers of the trials whose checkpoints stay."""
        if self.policy == "all":
            return {t.number for t in trials}
        if self.policy == "none":
            return set()
        best = select(trials).best
        return set() if best is None else {t.number for t in best.trials}

    def prune(self) -> Pruned:
        """Remove the checkpoints of finished trials that are not kept; never raises for a file."""
        if self.policy == "all":
            return Pruned(0, 0, ())
        trials = self.study.get_trials(deepcopy=False)
        keep = self.keep(trials)
        files = size = 0
        touched = []
        for t in trials:
            if t.number in keep or t.state.name not in FINISHED:
                continue
            removed = 0
            for path in recorded(trial_dir(self.trials_dir, t.number)):
                try:
                    n = path.stat().st_size
                    path.unlink()
                except OSError:
                    continue  # gone already (another worker), or not ours to remove
                files, size, removed = files + 1, size + n, removed + 1
            if removed:
                touched.append(t.number)
        return Pruned(files, size, tuple(touched))
