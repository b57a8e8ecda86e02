"""The trial function: suggest settings, run a fine-tuner, report every epoch, prune.

This is the only module that calls ``trial.report`` and ``trial.should_prune``. The fine-tuners
never see Optuna; they call back after every epoch and stop when asked.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from deepsc_tune.backends import EpochMetrics, Finetuner, FinetuneResult
from deepsc_tune.config import SearchSpace, Tracker, TrialRun, build_tracker
from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.study import _trial_record as tr
from deepsc_tune.study._folder import StudyFolder, trial_dir
from deepsc_tune.utils import interrupt_reason, process_start_time, write_text

#: Called with (trial number, epoch metrics) after every epoch, for progress display.
EpochProgress = Callable[[int, EpochMetrics], None]


def worker_identity() -> str:
    """Who is running a trial (:class:`~deepsc_tune.study._trial_record.Worker`'s attribute)."""
    pid = os.getpid()
    return tr.Worker(socket.gethostname(), pid, process_start_time(pid)).attr()


def build_objective(
    space: SearchSpace,
    finetuner: Finetuner,
    *,
    trials_dir: Path | None = None,
    on_epoch: EpochProgress | None = None,
    tracker: Tracker | None = None,
) -> Callable[[optuna.trial.Trial], float]:
    """Build the function Optuna optimises.

    Parameters
    ----------
    space
        The validated search space: what to suggest, fixed settings, the metric.
    finetuner
        A backend (:class:`~deepsc_tune.backends._interface.Finetuner`).
    trials_dir
        Folder for per-trial run directories (``NNNNN/``), used by the subprocess backend.
    on_epoch
        Progress hook, called after each epoch has been reported.
    tracker
        Experiment tracker (:mod:`~deepsc_tune.config._tracking`): one run per trial, every epoch, the
        end state. Default: the one ``study.tracking`` asks for, if any.

    The returned value is the best validation metric over the epochs run. Test metrics are
    stored as user attributes and never returned.
    """
    metric = space.metric
    tracker = tracker if tracker is not None else build_tracker(space.tracking)

    def objective(trial: optuna.trial.Trial) -> float:
        params = space.suggest(trial)
        settings = space.settings_for(params)
        # `deepsc-tune repeat` enqueues a known configuration with another seed.
        seed = trial.user_attrs.get(tr.REPEAT_SEED)
        if seed is not None:
            settings["seed"] = seed
        trial.set_user_attr(tr.WORKER, worker_identity())
        attrs = {"seed": settings.get("seed"), tr.REPEAT_OF: trial.user_attrs.get(tr.REPEAT_OF)}
        tracked = (
            tracker.start_trial(
                study_name=trial.study.study_name,
                number=trial.number,
                params=params,
                attrs={k: v for k, v in attrs.items() if v is not None},
            )
            if tracker is not None
            else None
        )
        history: list[dict[str, Any]] = []
        pruned_at: list[int] = []

        def report(m: EpochMetrics) -> bool:
            value = m.metric(metric)
            if value is None:
                raise DeepscTuneError(
                    f"the fine-tuner reported no {metric} at epoch {m.epoch}; "
                    "choose study.metric=val_accuracy or report macro-F1"
                )
            trial.report(float(value), m.epoch)  # the only write per epoch: pruning needs it
            history.append(m.to_dict())
            if tracked is not None:
                tracked.log_epoch(m.epoch, history[-1])
            if on_epoch is not None:
                on_epoch(trial.number, m)
            # The study's pruner never stops a repeat nor a trial at its last epoch (_pruning.py).
            if trial.should_prune():
                pruned_at.append(m.epoch)
                return True
            return False

        run_dir = trial_dir(trials_dir, trial.number) if trials_dir is not None else None
        try:
            # What the backend derives from the settings before it runs them (DeepSC's warmup
            # in real steps, and the ratio it is passed): stored with the trial, failed or not.
            trial_attrs = getattr(finetuner, "trial_attrs", None)
            for key, value in (trial_attrs(settings) if trial_attrs is not None else {}).items():
                trial.set_user_attr(key, value)
            result = finetuner.run(settings, metric=metric, on_epoch=report, run_dir=run_dir)
        except (KeyboardInterrupt, Exception) as e:
            # KeyboardInterrupt, a DeepscTuneError, or a bug or crash in a backend: keep the reason
            if isinstance(e, KeyboardInterrupt):
                reason = interrupt_reason(e)  # Ctrl-C, SIGTERM, a closed stdout
            elif isinstance(e, DeepscTuneError):
                reason = str(e)
            else:
                reason = f"{type(e).__name__}: {e}"
            _record_failure(trial, reason)
            _write_trial_file(run_dir, history, settings=settings)
            _end_tracking(tracked, "FAIL", None, reason)
            raise
        _record_result(trial, result)
        _write_trial_file(run_dir, history, {DEVICE: result.device, **result.extra}, settings=settings)
        best = result.best()
        value = best.metric(metric) if best is not None else None
        if pruned_at:
            _end_tracking(tracked, "PRUNED", value, None, pruned_at=pruned_at[0])
            raise optuna.TrialPruned(f"pruned after epoch {pruned_at[0]}")
        if value is None:
            _end_tracking(tracked, "FAIL", None, "the fine-tuner finished without reporting any epoch")
            raise DeepscTuneError("the fine-tuner finished without reporting any epoch")
        _end_tracking(
            tracked,
            "COMPLETE",
            float(value),
            None,
            best_epoch=result.best_epoch,
            test_accuracy=result.test_accuracy,
            test_macro_f1=result.test_macro_f1,
        )
        return float(value)

    return objective


def _end_tracking(
    tracked: TrialRun | None, state: str, value: float | None, reason: str | None, **summary: Any
) -> None:
    if tracked is not None:
        tracked.end(state=state, value=value, fail_reason=reason, summary=summary)


def _record_failure(trial: optuna.trial.Trial, reason: str) -> None:
    trial.set_user_attr(tr.FAIL_REASON, reason.strip()[:2000])


def _record_result(trial: optuna.trial.Trial, result: FinetuneResult) -> None:
    best = result.best()
    attrs = tr.result_attrs(
        best_epoch=result.best_epoch,
        val_accuracy=best.val_accuracy if best else None,
        val_macro_f1=best.val_macro_f1 if best else None,
        test_accuracy=result.test_accuracy,
        test_macro_f1=result.test_macro_f1,
    )
    for key, value in attrs.items():
        trial.set_user_attr(key, value)


#: File in a trial's run directory: every epoch's metrics and the backend's details (schedule,
#: step counts, precision, command line...). The study keeps the selection metric per epoch as
#: intermediate values and the results as short attributes; the rest would make `optuna trials`
#: unreadable and cost a database transaction per entry.
TRIAL_FILE = "trial.json"
#: Its key for the device the trial trained on.
DEVICE = "device"


#: Backend details kept whole: DeepSC's warmup plan (the ratio it is passed must give the same
#: steps again).
EXACT_DETAILS = ("warmup",)


def _compact(value: Any) -> Any:
    """Floats to 4 significant digits, recursively (seconds, schedule shapes, weights)."""
    if isinstance(value, float):
        return tr.four_digits(value)
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_compact(v) for v in value]
    return value


def _write_trial_file(
    run_dir: Path | None,
    history: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
) -> None:
    """The trial's folder keeps its full settings, every epoch and the backend's details."""
    if run_dir is None:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        details = {k: v if k in EXACT_DETAILS else _compact(v) for k, v in (extra or {}).items()}
        record = {"settings": dict(settings or {}), "history": history, **details}
        write_text(run_dir / TRIAL_FILE, json.dumps(record, default=str) + "\n")  # whole or not at all
    except OSError:
        pass  # details only: the study has the metric per epoch and the results


def read_trial_file(trials_dir: Path | None, number: int) -> dict[str, Any] | None:
    """A trial's ``trial.json`` (history and backend details), or ``None`` where it is not (a
    study run on another machine, a deleted folder)."""
    if trials_dir is None:
        return None
    try:
        record = json.loads((trial_dir(trials_dir, number) / TRIAL_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def epoch_history(trial: FrozenTrial, *, metric: str = "val_accuracy") -> list[dict[str, Any]]:
    """Per-epoch records of a trial: ``{"epoch": e, metric: value}`` from its intermediate values,
    or the full ``history`` attribute of studies written before it moved out of the study."""
    old = trial.user_attrs.get(tr.OLD_HISTORY)
    if isinstance(old, list):
        return old
    return [{"epoch": e, metric: v} for e, v in sorted(trial.intermediate_values.items())]


def _details(trial: FrozenTrial, folder: StudyFolder | None) -> dict[str, Any]:
    return (read_trial_file(folder.trials, trial.number) if folder is not None else None) or {}


def last_epoch(
    trial: FrozenTrial, folder: StudyFolder | None = None, *, metric: str = "val_accuracy"
) -> dict[str, Any]:
    """The metrics of ``trial``'s last epoch: from its ``trial.json`` in the study's ``folder``,
    else from the attributes of studies written before, else the selection ``metric``'s last
    reported value; ``{}`` for none."""
    history = _details(trial, folder).get("history")
    if isinstance(history, list) and history and isinstance(history[-1], dict):
        return history[-1]
    u = trial.user_attrs
    if tr.OLD_RESULTS["val_accuracy"] in u:  # the old study's long names: its val_* were the last epoch's
        return {key: u.get(key) for key in tr.OLD_LAST_EPOCH}
    value = tr.last_reported(trial)
    return {} if value is None else {metric: value}


def trial_device(trial: FrozenTrial, folder: StudyFolder | None = None) -> str | None:
    """The device ``trial`` trained on: from its ``trial.json`` in the study's ``folder``, else
    the attribute of studies written before; ``None`` where neither says."""
    return _details(trial, folder).get(DEVICE) or trial.user_attrs.get(tr.OLD_DEVICE)
