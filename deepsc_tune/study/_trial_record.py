"""The trial record: the attribute keys a study's trials carry, and the views read from them.

Every module that writes or reads a trial's user attributes (the objective, recovery, repeat,
the report, the export, the CLI) takes the key names and the derived views from here, so that
"is this a repeat", "the search trials", "the best search trial", state counts, a pruned trial's
value, why a trial failed and whether it may be pruned are each written once. The full list of
attributes and what they hold is in docs/architecture.md ("Trial records").

Read only: nothing here changes a study.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# ----------------------------------------------------------------------------- trial attributes

#: Who ran it, ``"host:pid:started"`` (:class:`Worker`; recovery tells dead workers by it).
WORKER = "worker"
#: Results, written once when the trial ends (:func:`result_attrs`): the best epoch and that
#: epoch's metrics, to 4 significant digits (the trial's value keeps the selection metric whole;
#: every epoch, the device and the backend's details are in the trial's folder, ``trial.json``).
#: A trial's settings are not stored per trial: the search space's fixed ones (the seed
#: included) and its params make them (:func:`trial_settings`), a repeat's seed is its own.
BEST_EPOCH = "best_epoch"
VAL_ACC = "val_acc"
VAL_F1 = "val_f1"
TEST_ACC = "test_acc"
TEST_F1 = "test_f1"
#: :class:`TrialResult`'s metric fields and the attribute each is kept in.
RESULT_KEYS = {"val_accuracy": VAL_ACC, "val_macro_f1": VAL_F1, "test_accuracy": TEST_ACC, "test_macro_f1": TEST_F1}
#: Why a FAIL trial failed.
FAIL_REASON = "fail_reason"
#: A configuration of the usage guide, queued by ``study.enqueue``.
ENQUEUED = "enqueued"
#: A repeat (``deepsc-tune repeat``, ``study.confirm``): the trial it re-runs and its seed.
REPEAT_OF = "repeat_of"
REPEAT_SEED = "repeat_seed"
#: A re-queued failed trial: the trial it retries, why, and how many retries led to it.
RETRY_OF = "retry_of"
RETRY_REASON = "retry_reason"
RETRY_COUNT = "retry_count"
#: Attributes of studies written by older versions (still read): the full settings, every
#: epoch, the command line, the seed, the results under their long names (``val_accuracy`` was
#: then the last epoch's), the epoch count, the duration and the device.
SETTINGS = "settings"
SEED = "seed"
OLD_DEVICE = "device"
OLD_HISTORY = "history"
OLD_ARGV = "argv"
OLD_RESULTS = {
    "val_accuracy": "best_val_accuracy",
    "val_macro_f1": "best_val_macro_f1",
    "test_accuracy": "test_accuracy",
    "test_macro_f1": "test_macro_f1",
}
OLD_EPOCHS_RUN = "epochs_run"
OLD_DURATION_S = "duration_s"
#: The last epoch's metrics, as studies written before kept them.
OLD_LAST_EPOCH = ("val_accuracy", "val_macro_f1")

# ----------------------------------------------------------------------------- study attributes

SEARCH_SPACE_SHA256 = "search_space_sha256"
SEARCH_SPACE_NAME = "search_space_name"
SEARCH_SPACE_PATH = "search_space_path"
METRIC = "metric"
N_TRIALS = "n_trials"
BACKEND = "backend"
DATA_FINGERPRINT = "data_fingerprint"
DEEPSC_TUNE_VERSION = "deepsc_tune_version"
OPTUNA_VERSION = "optuna_version"
CREATED_ON = "created_on"
#: What a study that recorded none optimised, and ran with.
DEFAULT_METRIC = "val_accuracy"
DEFAULT_BACKEND = "builtin"

#: States of a trial that has run to its end (counted towards ``n_trials``).
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: The reason of a trial Optuna failed because its worker stopped sending heartbeats.
STALE_REASON = "worker stopped sending heartbeats (killed, preempted or lost)"


def study_metric(study_attrs: Mapping[str, Any]) -> str:
    """The metric a study optimises (its ``metric`` attribute)."""
    return study_attrs.get(METRIC, DEFAULT_METRIC)


def study_backend(study_attrs: Mapping[str, Any]) -> str:
    """The backend a study's trials ran on (its ``backend`` attribute)."""
    return study_attrs.get(BACKEND, DEFAULT_BACKEND)


# ----------------------------------------------------------------------------- views


def is_repeat(trial: FrozenTrial | optuna.trial.Trial) -> bool:
    """Whether ``trial`` re-runs another trial's configuration with another seed (made by
    ``deepsc-tune repeat`` or ``study.confirm``): not part of the search."""
    return REPEAT_OF in trial.user_attrs


def prunable(trial: FrozenTrial | optuna.trial.Trial) -> bool:
    """Whether a pruner may stop ``trial``: never a repeat (its full curve is the point)."""
    return not is_repeat(trial)


def search_only(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The search trials among ``trials`` (repeats left out)."""
    return [t for t in trials if not is_repeat(t)]


def search_trials(study: optuna.Study, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
    """Trials of the search itself: repeats made by ``deepsc-tune repeat`` are left out."""
    return search_only(study.get_trials(deepcopy=False, states=states))


def complete_repeats(trials: Sequence[FrozenTrial]) -> dict[int, list[FrozenTrial]]:
    """COMPLETE repeats with a value, by the number of the trial they repeat (in trial order)."""
    repeats: dict[int, list[FrozenTrial]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if is_repeat(t) and t.state == TrialState.COMPLETE and t.value is not None:
            repeats.setdefault(int(t.user_attrs[REPEAT_OF]), []).append(t)
    return repeats


def state_counts(trials: Sequence[FrozenTrial]) -> dict[TrialState, int]:
    """How many of ``trials`` are in each state (every state listed, zeros included)."""
    counts = {s: 0 for s in TrialState}
    for t in trials:
        counts[t.state] += 1
    return counts


def count_states(study: optuna.Study) -> dict[TrialState, int]:
    """:func:`state_counts` of the study's search trials."""
    return state_counts(search_trials(study))


def n_finished(counts: Mapping[TrialState, int]) -> int:
    """Finished trials (complete or pruned) in a :func:`state_counts` result."""
    return sum(counts[s] for s in FINISHED)


def last_reported(trial: FrozenTrial) -> float | None:
    """The last intermediate value ``trial`` reported (a pruned trial's value), or ``None``."""
    if not trial.intermediate_values:
        return None
    return trial.intermediate_values[max(trial.intermediate_values)]


def metric_value(trial: FrozenTrial) -> float | None:
    """``trial.value`` when COMPLETE, the last reported intermediate value when PRUNED or RUNNING.

    ``None`` for FAIL and WAITING trials and trials that reported nothing.
    """
    if trial.state == TrialState.COMPLETE:
        return trial.value
    if trial.state in (TrialState.FAIL, TrialState.WAITING):
        return None
    return last_reported(trial)


def trial_settings(trial: FrozenTrial, fixed: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``trial``'s full fine-tuner settings: the search space's ``fixed`` settings, its searched
    values, and the seed it ran with (a repeat's own).

    The study keeps no copy per trial (``optuna trials`` stays readable; the trial's folder has
    one, ``trial.json``); studies written before kept them in the ``settings`` attribute, which
    is read instead of ``fixed``.
    """
    old = trial.user_attrs.get(SETTINGS)
    if isinstance(old, dict):
        return {**old, **trial.params}
    out = {**(fixed or {}), **trial.params}
    seed = seed_of(trial, fixed)
    if seed is not None:
        out["seed"] = seed
    return out


def seed_of(trial: FrozenTrial, fixed: Mapping[str, Any] | None = None) -> int | None:
    """The seed ``trial`` ran with: a repeat's own, else the search space's (``fixed``); what
    studies written before recorded comes first. ``None`` where no seed was set."""
    u = trial.user_attrs
    old = u.get(SETTINGS) if isinstance(u.get(SETTINGS), dict) else {}
    for seed in (u.get(SEED), u.get(REPEAT_SEED), old.get("seed"), (fixed or {}).get("seed")):
        if seed is not None:
            return int(seed)
    return None


def setting(trial: FrozenTrial, key: str, default: Any = None, fixed: Mapping[str, Any] | None = None) -> Any:
    """A searched or fixed setting of ``trial`` (:func:`trial_settings`)."""
    return trial_settings(trial, fixed).get(key, default)


def epochs_run(trial: FrozenTrial) -> int:
    """Epochs the trial trained: the epochs it reported (studies before kept ``epochs_run``)."""
    n = trial.user_attrs.get(OLD_EPOCHS_RUN)
    if n is None:
        return len(trial.intermediate_values)
    return int(n)


def four_digits(value: float) -> float:
    """``value`` to 4 significant digits: how results are kept (the study's, ``trial.json``'s)."""
    return float(f"{float(value):.4g}")


def _short(value: float | None) -> float | None:
    return None if value is None else four_digits(value)


def result_attrs(
    *,
    best_epoch: int | None,
    val_accuracy: float | None,
    val_macro_f1: float | None,
    test_accuracy: float | None,
    test_macro_f1: float | None,
) -> dict[str, Any]:
    """The attributes a finished trial keeps (metrics of its best epoch, 4 significant digits)."""
    return {
        BEST_EPOCH: best_epoch,
        VAL_ACC: _short(val_accuracy),
        VAL_F1: _short(val_macro_f1),
        TEST_ACC: _short(test_accuracy),
        TEST_F1: _short(test_macro_f1),
    }


@dataclass(frozen=True)
class TrialResult:
    """What a trial's attributes say about its result (:func:`trial_result`)."""

    #: The epoch whose selection metric was best, and that epoch's metrics.
    best_epoch: int | None
    val_accuracy: float | None
    val_macro_f1: float | None
    #: Reported only, never used for selection.
    test_accuracy: float | None
    test_macro_f1: float | None
    epochs_run: int
    #: Seconds from start to end (``None`` while it runs).
    duration_s: float | None


def trial_result(trial: FrozenTrial) -> TrialResult:
    """The result of ``trial`` as its attributes record it, in this version's keys or those of
    studies written before (:data:`OLD_RESULTS`)."""
    u = trial.user_attrs
    old = VAL_ACC not in u and any(k in u for k in OLD_RESULTS.values())
    keys = OLD_RESULTS if old else RESULT_KEYS
    duration = u.get(OLD_DURATION_S)
    if duration is None and trial.datetime_start is not None and trial.datetime_complete is not None:
        duration = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 3)
    return TrialResult(
        best_epoch=u.get(BEST_EPOCH),
        **{name: u.get(key) for name, key in keys.items()},
        epochs_run=epochs_run(trial),
        duration_s=duration,
    )


@dataclass(frozen=True)
class Worker:
    """The process that runs a trial: its host, pid and the pid's start time (which tells a
    live worker from a later process that reuses its pid)."""

    host: str
    pid: int
    started: str | None

    def attr(self) -> str:
        """The :data:`WORKER` attribute: ``"host:pid:started"``."""
        return f"{self.host}:{self.pid}:{self.started or ''}"


def worker_of(trial: FrozenTrial | optuna.trial.Trial) -> Worker | None:
    """Who ran ``trial`` (:data:`WORKER`; studies before stored a dict), or ``None``."""
    value = trial.user_attrs.get(WORKER)
    try:
        if isinstance(value, dict):
            return Worker(str(value["host"]), int(value["pid"]), value.get("started"))
        if isinstance(value, str):
            host, pid, started = value.rsplit(":", 2)
            return Worker(host, int(pid), started or None)
    except (KeyError, TypeError, ValueError):
        pass
    return None


def failure_reason(trial: FrozenTrial) -> str | None:
    """Why a trial failed, as recorded in the study (``None`` unless it is FAIL)."""
    if trial.state != TrialState.FAIL:
        return None
    reason = trial.user_attrs.get(FAIL_REASON)
    if reason:
        return reason
    if trial.system_attrs.get(FAIL_REASON):
        return trial.system_attrs[FAIL_REASON]
    return STALE_REASON


def other_data(study_attrs: Mapping[str, Any], fingerprint: str | None) -> str | None:
    """The study's data fingerprint when it differs from ``fingerprint`` (both known), else ``None``.

    A different fingerprint means a data file changed since the study was made: its trials and
    new ones would not be comparable.
    """
    stored = study_attrs.get(DATA_FINGERPRINT)
    if stored and fingerprint and stored != fingerprint:
        return stored
    return None
