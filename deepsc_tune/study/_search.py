"""One search as the library runs it: everything ``deepsc-tune run`` does between its options and
its printing, so a notebook or a script runs the same search.

:func:`record_references` stores what every view of the result compares with (chance levels of
the validation cells, the logistic-regression baseline on the same cells), once per study.
:func:`run_search` hands the fine-tuner its keepers (the built-in fine-tuner's best weights in the
study's ``model/``, DeepSC's checkpoints of the chosen configuration only), runs the search to
its target (:func:`~deepsc_tune.study._study.run_study`), then ``study.confirm``'s repeats
(:func:`~deepsc_tune.study._confirm.run_confirmation`), and prunes the checkpoints left over.
Nothing here prints: the lines worth saying go to the caller's ``say`` as they happen (the
command line prints them; a ``note:`` line is one a worker process says too).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from deepsc_tune.backends import Finetuner, get_backend
from deepsc_tune.config import SearchSpace
from deepsc_tune.study._checkpoints import CheckpointKeeper
from deepsc_tune.study._confirm import ConfirmSummary, run_confirmation
from deepsc_tune.study._folder import StudyFolder, rehome_model, trial_dir
from deepsc_tune.study._runner import Watcher
from deepsc_tune.study._study import RunSummary, run_study


@dataclass
class SearchOutcome:
    """What :func:`run_search` did."""

    summary: RunSummary
    confirmed: ConfirmSummary | None


def record_references(study: optuna.Study, space: SearchSpace, data: Any, cache_dir: Path) -> list[str]:
    """Store the validation cells' chance levels and the logistic-regression baseline in the
    study, once; the lines to say about the baseline.

    ``data``: the built-in fine-tuner's prepared data; ``None`` for a program, whose files are
    read instead (DeepSC's ``data_path_eval`` labels for chance, ``data_path`` and
    ``data_path_eval`` for the baseline).
    """
    from deepsc_tune.data import (
        BASELINE_ATTR,
        CHANCE_ATTR,
        baseline_for,
        baseline_for_files,
        chance_levels,
        record_baseline,
    )

    if CHANCE_ATTR not in study.user_attrs:
        levels = chance_levels(data.y_val, data.classes) if data is not None else _program_chance(space)
        if levels is not None:
            study.set_user_attr(CHANCE_ATTR, levels)
    if BASELINE_ATTR in study.user_attrs:
        return []
    from deepsc_tune.backends.command.deepsc import deepsc_inputs

    if data is not None:
        record, cells = baseline_for(data, cache_dir), "the same cells"
    elif (inputs := deepsc_inputs(space.settings) if space.backend == "command" else None) is not None:
        record, cells = baseline_for_files(inputs, cache_dir), "DeepSC's data_path / data_path_eval"
    else:
        return []
    record_baseline(study, record)
    if record is None:
        return ["baseline: none: DeepSC splits its validation cells off data_path itself (no data_path_eval read)"]
    return [
        f"baseline: logistic regression on {cells}, validation accuracy {record['accuracy']:.4f}, "
        f"macro-F1 {record['macro_f1']:.4f} (the score to beat)"
    ]


def _program_chance(space: SearchSpace) -> dict[str, float] | None:
    """Chance levels of DeepSC's evaluation file, or ``None`` (another program, no such file)."""
    from deepsc_tune.backends.command.deepsc import deepsc_chance, deepsc_values, is_deepsc_command

    if not get_backend(space.backend).runs_program or not is_deepsc_command(space.settings.command):
        return None
    return deepsc_chance(deepsc_values(space.settings, space.fixed))


def attach_keepers(finetuner: Finetuner, space: SearchSpace, study: optuna.Study, folder: StudyFolder) -> list[str]:
    """Let the built-in fine-tuner keep the best run's weights in ``folder.model``
    (:mod:`deepsc_tune.backends.builtin._tuned_model`), DeepSC's keep only the chosen
    configuration's checkpoints (``finetune.keep_checkpoints``); the lines to say."""
    backend = get_backend(space.backend)
    if backend.runs_program:
        finetuner.checkpoint_keeper = CheckpointKeeper(study, folder.trials, space.settings.keep_checkpoints)  # type: ignore[attr-defined]
        return []
    if not backend.in_process:
        return []
    from deepsc_tune.backends.builtin import ModelKeeper

    notes = []
    moved = rehome_model(folder)
    if moved is not None:
        notes.append(f"note: moved the model of another study from {folder.model} to {moved}, its study's folder")
    completed = {t.number: t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    finetuner.keeper = ModelKeeper(  # type: ignore[attr-defined]
        folder.model,
        study_name=study.study_name,
        metric=space.metric,
        data=finetuner.data,  # type: ignore[attr-defined]
        data_settings=space.data_settings.to_dict(),
        completed=completed,
    )
    return notes


def prune_checkpoints(keeper: CheckpointKeeper | None) -> str | None:
    """After the last trial: remove the checkpoints the trials' own pruning could not yet; the
    line that says what is kept (``None`` without a keeper)."""
    if keeper is None:
        return None
    from deepsc_tune.backends.command.deepsc import disk_usage, format_bytes

    keeper.prune()
    trials = keeper.study.get_trials(deepcopy=False)
    files, size = disk_usage(trial_dir(keeper.trials_dir, t.number) for t in trials)
    return (
        f"DeepSC checkpoints kept: {files} files, {format_bytes(size)} "
        f"(finetune.keep_checkpoints: {keeper.policy}; the others are removed as trials end)"
    )


def run_search(
    space: SearchSpace,
    finetuner: Finetuner,
    *,
    study: optuna.Study,
    folder: StudyFolder,
    storage: Any = None,
    progress: Watcher | None = None,
    stop: Callable[[], bool] | None = None,
    say: Callable[[str], None] | None = None,
) -> SearchOutcome:
    """Run the search of ``space`` on ``study`` to its target, then ``study.confirm``'s repeats.

    ``folder``: the study's folder (trial folders, model). ``storage``: the study's storage (the
    start lock the confirmation shares with other workers). ``stop``: asked between trials (a
    time budget). ``say``: gets the lines worth saying, as they happen. Raises what
    :func:`~deepsc_tune.study._study.run_study` raises.
    """
    tell = say or (lambda _line: None)
    for line in attach_keepers(finetuner, space, study, folder):
        tell(line)
    summary = run_study(space, finetuner, study=study, progress=progress, trials_dir=folder.trials, stop=stop)
    confirmed = run_confirmation(
        space, finetuner, study=study, storage=storage, progress=progress, trials_dir=folder.trials
    )
    kept = prune_checkpoints(getattr(finetuner, "checkpoint_keeper", None))
    if kept is not None:
        tell(kept)
    if confirmed is not None:
        tell(
            f"confirmation (study.confirm top {space.confirm['top']}, seeds {space.confirm['seeds']}): "
            f"queued {confirmed.queued}, ran {len(confirmed.ran)} ({len(confirmed.failed)} failed)"
        )
    return SearchOutcome(summary=summary, confirmed=confirmed)
