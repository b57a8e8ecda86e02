"""What users open after a search: ``report.html``, ``trials.csv``, ``best.yaml`` and an index.

Read only. A report reads the study once (one ``get_trials`` call, no transaction held), so it can
be made while workers are still writing trials, and it never changes the study.

Two layers, as in Optuna's own plots: plain functions compute the data of every plot as
NamedTuples (``frontier_data``, ``learning_curves``, ``optimization_history``, ``epoch_budget``,
``stability_data``, ``param_importances``, ``contour_data``, ``summary_data``), and separate
``plot_*`` functions draw them with plotly. Tests check the data; the page is only drawing.

Definitions used throughout:

- A trial's *metric value* is ``trial.value`` (the best validation metric over the epochs run)
  for a COMPLETE trial, and the last reported intermediate value for a PRUNED (or RUNNING) one;
  failed trials have none.
- The *envelope* of one scheduler type is the best metric value reached at or below each learning
  rate: its points sorted by learning rate, one step per distinct learning rate, each step the
  maximum over all points with a learning rate lower than or equal to it (a cumulative maximum,
  so it never decreases from left to right).
- *Epochs saved* by pruning: for each PRUNED trial, the epochs it was set to run (its ``epoch``
  setting) minus the epochs it ran.
- *Search trials* leave out the repeats made by ``deepsc-tune repeat`` or ``study.confirm``
  (``repeat_of``); repeats appear in the summary (the chosen configuration's mean ± sd over seeds,
  :mod:`deepsc_tune.selection`), as rings on the frontier, in the stability section, the counts
  and ``trials.csv``.
"""

from __future__ import annotations

import csv
import datetime
import html
import math
import os
import statistics
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.export import format_best
from deepsc_tune.selection import configurations, format_reported, select
from deepsc_tune.space_record import config_value
from deepsc_tune.trial_record import (
    RETRY_OF,
    complete_repeats,
    failure_reason,
    is_repeat,
    metric_value,
    ranked_search_trials,
    search_only,
    state_counts,
    study_backend,
    study_metric,
)

#: Default number of best configurations shown in the stability section.
TOP_CONFIGS = 5
#: Epochs at the end of a learning curve whose spread measures epoch-to-epoch stability.
LAST_EPOCHS = 3
#: One colour per scheduler type (others get the next colour of ``EXTRA_COLOURS``).
SCHEDULER_COLOURS = {"constant": "#1f77b4", "cosine": "#ff7f0e", "cosine_restarts": "#2ca02c"}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PRUNED_COLOUR = "#b0b0b0"
BEST_COLOUR = "#d62728"
#: Label of trials whose learning-rate schedule is not a searched or fixed setting.
NO_SCHEDULER = "(fixed)"
#: Columns of ``trials.csv`` after ``number``, ``state`` and the searched parameters.
CSV_COLUMNS = (
    "value",
    "best_val_accuracy",
    "best_val_macro_f1",
    "val_accuracy",
    "val_macro_f1",
    "best_epoch",
    "test_accuracy",
    "test_macro_f1",
    "epochs_run",
    "epochs_set",
    "duration_s",
    "seed",
    "fail_reason",
    "enqueued",
    "repeat_of",
    "repeat_seed",
    "retry_of",
    "datetime_start",
    "datetime_complete",
)
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
TEMPLATE = "plotly_white"


# ============================================================================ plot data


def setting(trial: FrozenTrial, key: str, default: Any = None) -> Any:
    """A searched or fixed setting of ``trial`` (searched value first)."""
    if key in trial.params:
        return trial.params[key]
    return (trial.user_attrs.get("settings") or {}).get(key, default)


def epochs_run(trial: FrozenTrial) -> int:
    """Epochs the trial trained (``epochs_run``; else the epochs it reported)."""
    n = trial.user_attrs.get("epochs_run")
    if n is None:
        return len(trial.intermediate_values)
    return int(n)


def epochs_set(trial: FrozenTrial, default: int | None = None) -> int | None:
    """Epochs the trial was set to run (its ``epoch`` setting)."""
    n = setting(trial, "epoch", default)
    return None if n is None else int(n)


def format_number(x: float | None) -> str:
    """Short text for learning rates and ratios: ``1e-4``, ``3.6e-3``, ``0.03``."""
    if x is None:
        return "-"
    if x != 0 and abs(x) < 1e-2:
        mantissa, exponent = f"{x:.1e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return f"{x:.3g}"


def config_label(params: Mapping[str, Any]) -> str:
    """``constant 1e-4`` / ``cosine 1e-4 warmup 0.03`` (other searched values appended)."""
    parts = []
    if "lr_scheduler_type" in params:
        parts.append(str(params["lr_scheduler_type"]))
    if "learning_rate" in params:
        parts.append(format_number(params["learning_rate"]))
    if "warmup_ratio" in params:
        parts.append(f"warmup {format_number(params['warmup_ratio'])}")
    for key, value in params.items():
        if key not in ("lr_scheduler_type", "learning_rate", "warmup_ratio"):
            parts.append(f"{key} {format_number(value) if isinstance(value, float) else value}")
    return " ".join(parts)


class FrontierPoint(NamedTuple):
    """One finished search trial on the learning-rate frontier."""

    number: int
    scheduler: str
    learning_rate: float
    value: float
    state: str  # "COMPLETE" or "PRUNED"
    label: str | None  # "guide: constant 1e-4" for the usage guide's enqueued configs
    params: dict[str, Any]
    seeds: int = 1  # COMPLETE runs of this configuration (search trial + repeats); > 1: confirmed


class EnvelopeStep(NamedTuple):
    """Best metric value reached at or below ``learning_rate`` (by trial ``number``)."""

    learning_rate: float
    value: float
    number: int


class Frontier(NamedTuple):
    """Points per scheduler type and their envelopes (both keyed by scheduler, in LR order)."""

    points: dict[str, list[FrontierPoint]]
    envelopes: dict[str, list[EnvelopeStep]]


def envelope(points: Sequence[FrontierPoint]) -> list[EnvelopeStep]:
    """Cumulative maximum of ``points`` over increasing learning rate, one step per distinct LR.

    Step ``i`` holds ``max(value of p for p in points if p.learning_rate <= lr_i)``, so the values
    never decrease; ``number`` names the trial that reached it (the earliest on ties).
    """
    steps: list[EnvelopeStep] = []
    best: tuple[float, int] | None = None
    for p in sorted(points, key=lambda p: (p.learning_rate, p.number)):
        if best is None or p.value > best[0]:
            best = (p.value, p.number)
        if steps and steps[-1].learning_rate == p.learning_rate:
            steps[-1] = EnvelopeStep(p.learning_rate, best[0], best[1])
        else:
            steps.append(EnvelopeStep(p.learning_rate, best[0], best[1]))
    return steps


def frontier_data(trials: Sequence[FrozenTrial]) -> Frontier:
    """Learning rate against metric value for finished search trials, grouped by scheduler type.

    COMPLETE trials at ``trial.value``, PRUNED ones at their last intermediate value; trials with
    no learning rate or no value are left out. The usage guide's configs (``enqueued``) get a
    ``label`` such as ``guide: cosine 1e-4 warmup 0.03``.
    """
    points: dict[str, list[FrontierPoint]] = {}
    seeds = {c.number: c.n for c in configurations(trials)}
    for t in search_only(trials):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        lr, value = setting(t, "learning_rate"), metric_value(t)
        if lr is None or value is None:
            continue
        scheduler = str(setting(t, "lr_scheduler_type", NO_SCHEDULER))
        label = f"guide: {config_label(t.params)}" if t.user_attrs.get("enqueued") else None
        points.setdefault(scheduler, []).append(
            FrontierPoint(
                t.number,
                scheduler,
                float(lr),
                float(value),
                t.state.name,
                label,
                dict(t.params),
                seeds.get(t.number, 1),
            )
        )
    points = {k: sorted(v, key=lambda p: (p.learning_rate, p.number)) for k, v in sorted(points.items())}
    return Frontier(points=points, envelopes={k: envelope(v) for k, v in points.items()})


class Curve(NamedTuple):
    """Validation metric per epoch of one search trial."""

    number: int
    state: str
    scheduler: str
    epochs: tuple[int, ...]
    values: tuple[float, ...]
    is_best: bool


def learning_curves(trials: Sequence[FrozenTrial]) -> list[Curve]:
    """Intermediate values of every search trial that reported any (running ones included)."""
    best = best_trial(trials)
    curves = []
    for t in search_only(trials):
        if not t.intermediate_values:
            continue
        epochs = tuple(sorted(t.intermediate_values))
        curves.append(
            Curve(
                number=t.number,
                state=t.state.name,
                scheduler=str(setting(t, "lr_scheduler_type", NO_SCHEDULER)),
                epochs=epochs,
                values=tuple(float(t.intermediate_values[e]) for e in epochs),
                is_best=best is not None and t.number == best.number,
            )
        )
    return curves


class HistoryPoint(NamedTuple):
    """One finished or failed search trial, in trial-number order."""

    number: int
    state: str
    value: float | None  # metric value (None for FAIL)
    best_so_far: float | None  # best COMPLETE value among trials up to this one
    epochs: int  # epochs this trial ran
    cumulative_epochs: int  # epochs run by this and all earlier trials


def optimization_history(trials: Sequence[FrozenTrial]) -> list[HistoryPoint]:
    """Best-so-far against trial number and against epochs spent (COMPLETE, PRUNED, FAIL).

    The best so far counts COMPLETE trials only, like ``study.best_trial``; pruned and failed
    trials add their epochs to the total spent.
    """
    out: list[HistoryPoint] = []
    best: float | None = None
    spent = 0
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    for t in sorted(search_only(trials), key=lambda t: t.number):
        if t.state not in done:
            continue
        n = epochs_run(t)
        spent += n
        if t.state == TrialState.COMPLETE and t.value is not None and (best is None or t.value > best):
            best = t.value
        out.append(HistoryPoint(t.number, t.state.name, metric_value(t), best, n, spent))
    return out


class EpochBudget(NamedTuple):
    """Epochs trained, and epochs pruning saved against running every pruned trial to the end."""

    trained: int  # all trials, any state, repeats included
    saved: int  # sum over PRUNED trials of (epochs set - epochs run)
    without_pruning: int  # trained + saved
    pruned_trials: int


def epoch_budget(trials: Sequence[FrozenTrial], *, default_epochs: int | None = None) -> EpochBudget:
    """Count epochs trained and saved; ``default_epochs`` for trials that recorded no settings."""
    trained = sum(epochs_run(t) for t in trials)
    saved = pruned = 0
    for t in trials:
        if t.state != TrialState.PRUNED:
            continue
        pruned += 1
        total = epochs_set(t, default_epochs)
        if total is not None:
            saved += max(0, total - epochs_run(t))
    return EpochBudget(trained=trained, saved=saved, without_pruning=trained + saved, pruned_trials=pruned)


class SeedRun(NamedTuple):
    """One run of a configuration: the original search trial or a repeat with another seed."""

    number: int
    seed: int | None
    value: float
    test_accuracy: float | None
    test_macro_f1: float | None


class StabilityRow(NamedTuple):
    """Spread of one top configuration over its last epochs and across seeds."""

    number: int
    label: str
    value: float
    last_values: tuple[float, ...]  # the metric over the last epochs of the original trial
    last_epochs_std: float | None  # population std (ddof=0) of last_values
    runs: tuple[SeedRun, ...]  # the original first, then COMPLETE repeats by seed
    seed_mean: float | None
    seed_std: float | None  # sample std (ddof=1) of the runs' values; None with one run
    test_accuracy_mean: float | None
    test_accuracy_std: float | None  # sample std across runs with a test accuracy


def _std(values: Sequence[float], *, ddof: int) -> float | None:
    if len(values) <= ddof or not values:
        return None
    return statistics.stdev(values) if ddof == 1 else statistics.pstdev(values)


def stability_data(
    trials: Sequence[FrozenTrial], *, top: int = TOP_CONFIGS, last: int = LAST_EPOCHS
) -> list[StabilityRow]:
    """The ``top`` best COMPLETE search trials, with their epoch-to-epoch and seed-to-seed spread.

    ``last_epochs_std`` is the population standard deviation of the metric over the last ``last``
    epochs the trial ran (fewer if it ran fewer). ``seed_std`` is the sample standard deviation of
    the best validation metric across the original trial and its COMPLETE repeats
    (``repeat_of`` = its number), ``None`` until a repeat has completed.
    """
    ranked = ranked_search_trials(trials)[:top]
    repeats = complete_repeats(trials)
    rows = []
    for t in ranked:
        epochs = sorted(t.intermediate_values)[-last:]
        last_values = tuple(float(t.intermediate_values[e]) for e in epochs)
        runs = [_seed_run(t)] + [
            _seed_run(r) for r in sorted(repeats.get(t.number, []), key=lambda r: (_seed(r) or 0, r.number))
        ]
        values = [r.value for r in runs]
        tests = [r.test_accuracy for r in runs if r.test_accuracy is not None]
        rows.append(
            StabilityRow(
                number=t.number,
                label=config_label(t.params),
                value=float(t.value),
                last_values=last_values,
                last_epochs_std=_std(last_values, ddof=0),
                runs=tuple(runs),
                seed_mean=statistics.fmean(values),
                seed_std=_std(values, ddof=1),
                test_accuracy_mean=statistics.fmean(tests) if tests else None,
                test_accuracy_std=_std(tests, ddof=1),
            )
        )
    return rows


def _seed(t: FrozenTrial) -> int | None:
    seed = t.user_attrs.get("repeat_seed", t.user_attrs.get("seed"))
    return None if seed is None else int(seed)


def _seed_run(t: FrozenTrial) -> SeedRun:
    return SeedRun(
        t.number, _seed(t), float(t.value), t.user_attrs.get("test_accuracy"), t.user_attrs.get("test_macro_f1")
    )


class Importances(NamedTuple):
    """Parameter importances (name -> share, summing to 1), or why there are none."""

    values: dict[str, float]
    note: str | None
    #: What a share does not say: parameters left out or never varied (conditional ones).
    explanations: tuple[str, ...] = ()


def _study_of(trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study holding ``trials`` (Optuna's analysis functions take a study)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(direction="maximize", storage=optuna.storages.InMemoryStorage())
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    return study


def param_importances(trials: Sequence[FrozenTrial]) -> Importances:
    """Optuna's importances (its default evaluator) over COMPLETE search trials.

    None when fewer than 2 trials completed, fewer than 2 parameters were searched, or the
    values do not vary.
    """
    complete = [t for t in search_only(trials) if t.state == TrialState.COMPLETE and t.value is not None]
    names = sorted({name for t in complete for name in t.params})
    if len(complete) < 2:
        return Importances({}, f"importances need 2 or more complete trials ({len(complete)} so far)")
    if len(names) < 2:
        return Importances({}, f"only {', '.join(names) or 'no parameter'} searched: nothing to compare")
    if len({t.value for t in complete}) < 2:
        return Importances({}, "every complete trial reached the same value: nothing to attribute")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(_study_of(complete))
    except Exception as e:  # Optuna's evaluators refuse some degenerate studies
        return Importances({}, f"importances could not be computed: {type(e).__name__}: {e}")
    return Importances(
        {k: float(v) for k, v in values.items()}, None, _importance_explanations(values, complete, search_only(trials))
    )


def _importance_explanations(
    values: Mapping[str, float], complete: Sequence[FrozenTrial], searched: Sequence[FrozenTrial]
) -> tuple[str, ...]:
    """What a share does not say: which trials Optuna used (only those with every parameter, so
    a conditional parameter narrows them), and that 0.00 can mean "never varied among them"."""
    lines = []
    n = len(complete)
    used = [t for t in complete if set(values) <= set(t.params)]
    for name in sorted({p for t in complete for p in t.params} - set(values)):
        k = sum(name in t.params for t in complete)
        lines.append(
            f"{name} is left out: only {k} of the {n} complete trials have it (it is searched under a condition)"
        )
    conditional = sorted(name for name in values if any(name not in t.params for t in searched))
    if conditional:
        where = (
            f"the {len(used)} of the {n} complete trials"
            if len(used) < n
            else f"all {n} complete trials, the only ones"
        )
        lines.append(
            f"Optuna weighs only trials that have every parameter: {where} that have "
            f"{', '.join(conditional)} (searched under a condition)"
        )
    for name, share in values.items():
        seen = {repr(t.params[name]) for t in used}
        if len(seen) == 1:
            lines.append(
                f"{name} is {next(iter(seen))} in all {len(used)} of those trials: its {share:.2f} "
                "means it never varied there, not that it does not matter (the learning-rate "
                "frontier compares its values, pruned trials included)"
            )
    return tuple(lines)


class ContourData(NamedTuple):
    """COMPLETE cosine search trials: learning_rate, warmup_ratio and metric value."""

    numbers: tuple[int, ...]
    learning_rate: tuple[float, ...]
    warmup_ratio: tuple[float, ...]
    values: tuple[float, ...]
    note: str | None


def contour_data(trials: Sequence[FrozenTrial], *, scheduler: str = "cosine") -> ContourData:
    """Points for the learning_rate x warmup_ratio contour of ``scheduler`` trials.

    COMPLETE search trials that searched both parameters; a note instead of a contour when
    fewer than 3 (a contour needs 3 points).
    """
    rows = [
        (t.number, float(t.params["learning_rate"]), float(t.params["warmup_ratio"]), float(t.value))
        for t in search_only(trials)
        if t.state == TrialState.COMPLETE
        and t.value is not None
        and setting(t, "lr_scheduler_type") == scheduler
        and "learning_rate" in t.params
        and "warmup_ratio" in t.params
    ]
    note = None
    if len(rows) < 3:
        note = f"the contour needs 3 or more complete {scheduler} trials ({len(rows)} so far)"
    if not rows:
        return ContourData((), (), (), (), note)
    numbers, lrs, warmups, values = zip(*rows)
    return ContourData(numbers, lrs, warmups, values, note)


class FailedTrial(NamedTuple):
    number: int
    reason: str
    retried_as: int | None


@dataclass
class Summary:
    """The summary table: best configuration, counts, epochs, and the lines to paste into DeepSC."""

    study_name: str
    metric: str
    counts: dict[str, int]  # search trials by state name
    repeat_counts: dict[str, int]  # repeats by state name
    budget: EpochBudget
    failed: list[FailedTrial]
    best_number: int | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_value: float | None = None
    best_epoch: int | None = None
    epochs_set: int | None = None
    val_accuracy: float | None = None
    val_macro_f1: float | None = None
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    override_line: str | None = None
    yaml_block: str | None = None
    seeds: int = 1  # runs of the chosen configuration over seeds (search trial + COMPLETE repeats)
    seeds_mean: float | None = None  # the study metric, mean and sd over those seeds
    seeds_sd: float | None = None
    seeds_test_accuracy: str | None = None  # "mean ± sd" over seeds, reported only
    seeds_test_macro_f1: str | None = None
    leader: str | None = None  # whether the pick is distinguishable from the runner-up

    @property
    def finished(self) -> int:
        return self.counts.get("COMPLETE", 0) + self.counts.get("PRUNED", 0)


def best_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The chosen configuration's search trial: by the mean over seeds (:mod:`deepsc_tune.selection`).

    Without repeats, the best COMPLETE search trial (lowest number on ties), as
    ``study.best_search_trial``.
    """
    best = select(trials).best
    return best.trial if best is not None else None


def _counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    return {s.name: n for s, n in state_counts(trials).items()}


def summary_data(
    study: optuna.Study,
    trials: Sequence[FrozenTrial],
    *,
    backend: str = "builtin",
    record_dir: Path | None = None,
) -> Summary:
    """Best configuration and its metrics, trial counts, failures with reasons, epochs spent.

    ``record_dir``: the study's results folder (a DeepSC study's export reads its search space and
    trial records there)."""
    search = search_only(trials)
    retries = {int(t.user_attrs[RETRY_OF]): t.number for t in trials if RETRY_OF in t.user_attrs}
    failed = [
        FailedTrial(t.number, (failure_reason(t) or "").strip(), retries.get(t.number))
        for t in trials
        if t.state == TrialState.FAIL
    ]
    default_epochs = config_value(study.user_attrs, "epoch")
    summary = Summary(
        study_name=study.study_name,
        metric=study_metric(study.user_attrs),
        counts=_counts(search),
        repeat_counts=_counts([t for t in trials if is_repeat(t)]),
        budget=epoch_budget(trials, default_epochs=default_epochs),
        failed=failed,
    )
    selection = select(trials)
    if selection.best is None:
        return summary
    chosen = selection.best
    best = chosen.trial
    summary.seeds, summary.seeds_mean, summary.seeds_sd = chosen.n, chosen.mean, chosen.sd
    summary.seeds_test_accuracy = format_reported(chosen.test_accuracy)
    summary.seeds_test_macro_f1 = format_reported(chosen.test_macro_f1)
    summary.leader = selection.leader_test.reason if selection.leader_test is not None else None
    u = best.user_attrs
    summary.best_number = best.number
    summary.best_params = dict(best.params)
    summary.best_value = best.value
    summary.best_epoch = u.get("best_epoch")
    summary.epochs_set = epochs_set(best, default_epochs)
    summary.val_accuracy = u.get("best_val_accuracy")
    summary.val_macro_f1 = u.get("best_val_macro_f1")
    summary.test_accuracy = u.get("test_accuracy")
    summary.test_macro_f1 = u.get("test_macro_f1")
    summary.override_line = _strip_comments(
        format_best(study, best, fmt="hydra", backend=backend, selection=selection, folder=record_dir)
    )
    summary.yaml_block = format_best(study, best, fmt="yaml", backend=backend, selection=selection, folder=record_dir)
    return summary


def _strip_comments(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.startswith("#"))


def trial_rows(trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """One flat dict per trial for ``trials.csv``: number, state, each parameter, metrics, tags."""
    names = sorted({name for t in trials for name in t.params})
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        u = t.user_attrs
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update({name: t.params.get(name) for name in names})
        row.update(
            {
                "value": metric_value(t),
                "best_val_accuracy": u.get("best_val_accuracy"),
                "best_val_macro_f1": u.get("best_val_macro_f1"),
                "val_accuracy": u.get("val_accuracy"),
                "val_macro_f1": u.get("val_macro_f1"),
                "best_epoch": u.get("best_epoch"),
                "test_accuracy": u.get("test_accuracy"),
                "test_macro_f1": u.get("test_macro_f1"),
                "epochs_run": epochs_run(t) if t.state != TrialState.WAITING else None,
                "epochs_set": epochs_set(t),
                "duration_s": u.get("duration_s"),
                "seed": u.get("seed"),
                "fail_reason": (failure_reason(t) or "").strip() or None,
                "enqueued": bool(u.get("enqueued")) or None,
                "repeat_of": u.get("repeat_of"),
                "repeat_seed": u.get("repeat_seed"),
                "retry_of": u.get("retry_of"),
                "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                "datetime_complete": (
                    t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None
                ),
            }
        )
        rows.append(row)
    return rows


class ReportData(NamedTuple):
    """Everything a report shows, computed from one read of the study."""

    summary: Summary
    frontier: Frontier
    curves: list[Curve]
    history: list[HistoryPoint]
    importances: Importances
    contour: ContourData
    stability: list[StabilityRow]
    trials: list[FrozenTrial]
    description: str
    dataset: str
    notes: list[str]  # what the page cannot show yet, and why (also printed by the CLI)


def dataset_name(study_user_attrs: Mapping[str, Any]) -> str:
    """``pbmc68k_reduced`` for ``builtin:pbmc68k_reduced``, the file's stem for a path."""
    return str(config_value(study_user_attrs, "dataset") or "-")


def build_report_data(
    study: optuna.Study, *, backend: str = "builtin", top: int = TOP_CONFIGS, record_dir: Path | None = None
) -> ReportData:
    """Read the study once and compute the data of every section (``record_dir``: the study's
    results folder, as in :func:`summary_data`)."""
    trials = list(study.get_trials(deepcopy=False))
    summary = summary_data(study, trials, backend=backend, record_dir=record_dir)
    importances = param_importances(trials)
    contour = contour_data(trials)
    notes = []
    if summary.finished == 0:
        running = summary.counts["RUNNING"]
        notes.append(
            f"study '{study.study_name}' has no finished trial yet ({len(trials)} trials: "
            f"{running} running, {summary.counts['WAITING']} waiting, {summary.counts['FAIL']} failed)"
        )
    else:
        if summary.best_number is None:
            notes.append("no trial has completed yet (pruned only): no best configuration")
        if importances.note:
            notes.append(importances.note)
        from deepsc_tune.chance import chance_note

        if (chance := chance_note(study, trials)) is not None:
            notes.append(chance)
    return ReportData(
        summary=summary,
        frontier=frontier_data(trials),
        curves=learning_curves(trials),
        history=optimization_history(trials),
        importances=importances,
        contour=contour,
        stability=stability_data(trials, top=top),
        trials=trials,
        description=str(config_value(study.user_attrs, "description") or ""),
        dataset=dataset_name(study.user_attrs),
        notes=notes,
    )


# ============================================================================ figures


def scheduler_colour(name: str, order: Sequence[str] = ()) -> str:
    """The colour of a scheduler type (fixed for DeepSC's names)."""
    if name in SCHEDULER_COLOURS:
        return SCHEDULER_COLOURS[name]
    others = [n for n in order if n not in SCHEDULER_COLOURS] or [name]
    index = others.index(name) if name in others else 0
    return EXTRA_COLOURS[index % len(EXTRA_COLOURS)]


def _layout(fig, *, title: str, height: int = 420, **kwargs) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template=TEMPLATE,
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.18},
        **kwargs,
    )
    return fig


def plot_frontier(frontier: Frontier, *, metric: str = "val_accuracy"):
    """Scatter of metric against learning rate (log x), envelopes as steps, guide configs labelled."""
    import plotly.graph_objects as go

    fig = go.Figure()
    order = list(frontier.points)
    for scheduler, points in frontier.points.items():
        colour = scheduler_colour(scheduler, order)
        for state, symbol, opacity in (("COMPLETE", "circle", 0.95), ("PRUNED", "x-thin-open", 0.6)):
            chosen = [p for p in points if p.state == state]
            if not chosen:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p.learning_rate for p in chosen],
                    y=[p.value for p in chosen],
                    mode="markers",
                    name=f"{scheduler} ({state.lower()})",
                    legendgroup=scheduler,
                    marker={
                        "color": colour,
                        "symbol": symbol,
                        "size": 10 if state == "COMPLETE" else 9,
                        "opacity": opacity,
                        "line": {
                            "width": 2 if state == "PRUNED" else 0.5,
                            "color": colour if state == "PRUNED" else "white",
                        },
                    },
                    customdata=[[p.number, config_label(p.params)] for p in chosen],
                    hovertemplate="trial %{customdata[0]}: %{customdata[1]}<br>"
                    + metric
                    + " %{y:.4f}<extra>"
                    + state.lower()
                    + "</extra>",
                )
            )
        steps = frontier.envelopes.get(scheduler) or []
        if steps:
            fig.add_trace(
                go.Scatter(
                    x=[s.learning_rate for s in steps],
                    y=[s.value for s in steps],
                    mode="lines",
                    line={"color": colour, "shape": "hv", "width": 2},
                    name=f"{scheduler} envelope",
                    legendgroup=scheduler,
                    hoverinfo="skip",
                )
            )
    confirmed = [p for ps in frontier.points.values() for p in ps if p.seeds > 1]
    if confirmed:  # a ring around configurations re-run with other seeds (study.confirm, repeat)
        fig.add_trace(
            go.Scatter(
                x=[p.learning_rate for p in confirmed],
                y=[p.value for p in confirmed],
                mode="markers",
                name="confirmed (several seeds)",
                marker={"symbol": "circle-open", "size": 18, "color": "#222", "line": {"width": 2}},
                customdata=[[p.number, p.seeds] for p in confirmed],
                hovertemplate="trial %{customdata[0]}: confirmed, %{customdata[1]} seeds<extra></extra>",
            )
        )
    labelled = sorted((p for ps in frontier.points.values() for p in ps if p.label), key=lambda p: p.number)
    for i, p in enumerate(labelled):
        fig.add_annotation(  # up-left, down-right, ...: the guide's configs often share an LR
            x=math.log10(p.learning_rate),
            y=p.value,
            text=p.label,
            showarrow=True,
            arrowhead=2,
            ax=-60 if i % 2 == 0 else 60,
            ay=-32 - 12 * (i // 2) if i % 2 == 0 else 32 + 12 * (i // 2),
            font={"size": 11},
            bgcolor="rgba(255,255,255,0.85)",
            bordercolor="#555",
            borderwidth=1,
        )
    fig.update_xaxes(type="log", title="learning_rate", exponentformat="power")
    fig.update_yaxes(title=f"best {metric} (pruned: last epoch reached)")
    return _layout(fig, title="Learning rate frontier", height=480)


def plot_curves(curves: Sequence[Curve], *, metric: str = "val_accuracy"):
    """Metric per epoch of every trial: pruned grey, running dashed, the best thick and red."""
    import plotly.graph_objects as go

    fig = go.Figure()
    order = sorted({c.scheduler for c in curves})
    shown: set[str] = set()
    for c in sorted(curves, key=lambda c: c.is_best):  # the best last, on top
        if c.is_best:
            style, name, group = {"color": BEST_COLOUR, "width": 4}, f"best: trial {c.number}", "best"
        elif c.state == "PRUNED":
            style, name, group = {"color": PRUNED_COLOUR, "width": 1}, "pruned", "pruned"
        elif c.state == "FAIL":
            style, name, group = {"color": "#e8a0a0", "width": 1, "dash": "dot"}, "failed", "failed"
        else:
            style = {"color": scheduler_colour(c.scheduler, order), "width": 1.5}
            if c.state == "RUNNING":
                style["dash"] = "dash"
            name, group = f"{c.scheduler} ({c.state.lower()})", f"{c.scheduler}-{c.state}"
        fig.add_trace(
            go.Scatter(
                x=list(c.epochs),
                y=list(c.values),
                mode="lines+markers",
                line=style,
                marker={"size": 4},
                name=name,
                legendgroup=group,
                showlegend=group not in shown,
                opacity=1.0 if c.is_best else 0.75,
                hovertemplate=f"trial {c.number} ({c.state.lower()})<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
            )
        )
        shown.add(group)
    fig.update_xaxes(title="epoch", dtick=1 if max((len(c.epochs) for c in curves), default=0) <= 20 else None)
    fig.update_yaxes(title=metric)
    return _layout(fig, title="Learning curves")


def plot_history(history: Sequence[HistoryPoint], *, metric: str = "val_accuracy"):
    """Best so far against trial number (left) and against cumulative epochs (right)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("by trial", "by epochs spent"), horizontal_spacing=0.08)
    for col, xs in ((1, [h.number for h in history]), (2, [h.cumulative_epochs for h in history])):
        for state, colour, symbol in (("COMPLETE", "#1f77b4", "circle"), ("PRUNED", PRUNED_COLOUR, "x-thin-open")):
            idx = [i for i, h in enumerate(history) if h.state == state and h.value is not None]
            fig.add_trace(
                go.Scatter(
                    x=[xs[i] for i in idx],
                    y=[history[i].value for i in idx],
                    mode="markers",
                    marker={"color": colour, "symbol": symbol, "size": 8, "line": {"width": 2, "color": colour}},
                    name=state.lower(),
                    legendgroup=state,
                    showlegend=col == 1,
                    customdata=[history[i].number for i in idx],
                    hovertemplate="trial %{customdata}: %{y:.4f}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        idx = [i for i, h in enumerate(history) if h.best_so_far is not None]
        fig.add_trace(
            go.Scatter(
                x=[xs[i] for i in idx],
                y=[history[i].best_so_far for i in idx],
                mode="lines",
                line={"color": BEST_COLOUR, "shape": "hv", "width": 2},
                name="best so far",
                legendgroup="best",
                showlegend=col == 1,
                hoverinfo="skip",
            ),
            row=1,
            col=col,
        )
    fig.update_xaxes(title_text="trial number", row=1, col=1)
    fig.update_xaxes(title_text="epochs trained (cumulative)", row=1, col=2)
    fig.update_yaxes(title_text=metric, row=1, col=1)
    return _layout(fig, title="Optimisation history")


def plot_importances(importances: Importances):
    """Horizontal bars, most important on top."""
    import plotly.graph_objects as go

    names = list(importances.values)[::-1]
    fig = go.Figure(
        go.Bar(
            x=[importances.values[n] for n in names],
            y=names,
            orientation="h",
            marker={"color": "#1f77b4"},
            text=[f"{importances.values[n]:.2f}" for n in names],
            textposition="auto",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title="importance (share)", range=[0, 1])
    return _layout(fig, title="Parameter importances", height=120 + 60 * max(len(names), 2))


#: Below this many points the contour shows the trials only: shading interpolated from a handful
#: of points paints the whole plane with values no trial measured.
MIN_CONTOUR_SHADING = 8
_CONTOUR_GRID = 60


def contour_grid(contour: ContourData) -> tuple[Any, Any, Any] | None:
    """Linear interpolation of the values over (log10 learning_rate, warmup_ratio), NaN outside
    the convex hull of the trials, so only the region the trials span is shaded; ``None`` with
    fewer than :data:`MIN_CONTOUR_SHADING` points or when they lie on a line."""
    import numpy as np
    from scipy.interpolate import griddata
    from scipy.spatial import QhullError

    if len(contour.values) < MIN_CONTOUR_SHADING:
        return None
    x = np.log10(np.asarray(contour.learning_rate))
    y = np.asarray(contour.warmup_ratio)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    gx = np.linspace(x.min(), x.max(), _CONTOUR_GRID)
    gy = np.linspace(y.min(), y.max(), _CONTOUR_GRID)
    try:
        z = griddata((x, y), np.asarray(contour.values), tuple(np.meshgrid(gx, gy)), method="linear")
    except (QhullError, ValueError):  # degenerate (e.g. collinear) point sets
        return None
    return 10**gx, gy, z


def plot_contour(contour: ContourData, *, trials: Sequence[FrozenTrial] = (), metric: str = "val_accuracy"):
    """The cosine trials on learning_rate x warmup_ratio, coloured by value; shaded only inside
    the region they span, and only from :data:`MIN_CONTOUR_SHADING` trials on."""
    import plotly.graph_objects as go

    fig = go.Figure()
    grid = contour_grid(contour)
    low, high = min(contour.values), max(contour.values)
    if grid is not None:
        gx, gy, z = grid
        fig.add_trace(
            go.Contour(
                x=gx,
                y=gy,
                z=z,
                colorscale="Blues",
                zmin=low,
                zmax=high,
                showscale=False,
                connectgaps=False,
                contours={"coloring": "heatmap"},
                line={"width": 0.5},
                hoverinfo="skip",
                opacity=0.8,
            )
        )
    fig.add_trace(
        go.Scatter(
            x=contour.learning_rate,
            y=contour.warmup_ratio,
            mode="markers",
            marker={
                "color": contour.values,
                "colorscale": "Blues",
                "cmin": low,
                "cmax": high,
                "size": 10,
                "line": {"color": "#333", "width": 1},
                "colorbar": {"title": {"text": metric}},
            },
            customdata=contour.numbers,
            hovertemplate="trial %{customdata}<br>learning_rate %{x:.3g}<br>warmup_ratio %{y:.3f}"
            f"<br>{metric} %{{marker.color:.4f}}<extra></extra>",
        )
    )
    fig.update_xaxes(type="log", title="learning_rate")
    fig.update_yaxes(title="warmup_ratio")
    title = "Cosine trials: learning_rate x warmup_ratio"
    if grid is None:
        title += f" (shading from {MIN_CONTOUR_SHADING} trials on)"
    fig = _layout(fig, title=title, height=460, showlegend=False)
    # The title sits just above the plot area, below plotly's toolbar (top right), not under it.
    fig.update_layout(
        title={"y": 1, "yref": "paper", "yanchor": "bottom", "pad": {"b": 8}, "font": {"size": 14}}, margin={"t": 80}
    )
    return fig


def plot_stability(rows: Sequence[StabilityRow], *, metric: str = "val_accuracy"):
    """Per top configuration: the last epochs' values and each seed's best value."""
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [f"#{r.number} {r.label}" for r in rows]
    fig.add_trace(
        go.Scatter(
            x=[lab for lab, r in zip(labels, rows) for _ in r.last_values],
            y=[v for r in rows for v in r.last_values],
            mode="markers",
            name=f"last {LAST_EPOCHS} epochs",
            marker={"color": PRUNED_COLOUR, "size": 8, "symbol": "line-ew-open", "line": {"width": 3}},
            hovertemplate="%{x}<br>late epoch: %{y:.4f}<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[lab for lab, r in zip(labels, rows) for _ in r.runs],
            y=[run.value for r in rows for run in r.runs],
            mode="markers",
            name="best value per seed",
            marker={"color": "#1f77b4", "size": 10},
            customdata=[run.seed for r in rows for run in r.runs],
            hovertemplate="%{x}<br>seed %{customdata}: %{y:.4f}<extra></extra>",
        )
    )
    fig.update_yaxes(title=metric)
    return _layout(fig, title="Stability of the top configurations")


# ============================================================================ page


@dataclass
class _Page:
    figures: list[str] = field(default_factory=list)

    def figure(self, fig, div_id: str) -> str:
        """The figure's HTML; plotly.js is inlined with the first figure of the page only."""
        text = fig.to_html(
            full_html=False,
            include_plotlyjs=not self.figures,
            div_id=div_id,
            config=PLOT_CONFIG,
            default_height=f"{fig.layout.height or 420}px",
        )
        self.figures.append(div_id)
        return f'<div class="figure">{text}</div>'


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1180px;
padding:18px 24px;color:#222;background:#fff}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.2em;margin:1.6em 0 .4em;border-bottom:1px solid #ddd}
.sub{color:#666;margin:.2em 0 1em}.note{background:#fff7e0;border-left:4px solid #f0b400;padding:.5em .8em;
margin:.6em 0}table{border-collapse:collapse;font-size:.92em;margin:.4em 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}pre{background:#f6f8fa;padding:.6em .8em;
overflow-x:auto;font-size:.88em}.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.figure{min-width:0}.muted{color:#888}
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _html_page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def _summary_html(s: Summary) -> str:
    rows: list[tuple[str, str]] = []
    if s.best_number is not None:
        rows += [
            ("best trial", f"#{s.best_number}: {_e(config_label(s.best_params))}"),
            (
                f"{s.metric} over seeds (selection)",
                f"{_pm(s.seeds_mean, s.seeds_sd) if s.seeds > 1 else _f(s.seeds_mean)} over {s.seeds} "
                f"seed{'s' if s.seeds > 1 else ''}"
                + (
                    f"; test accuracy {_e(s.seeds_test_accuracy)} / macro-F1 {_e(s.seeds_test_macro_f1)} "
                    "<span class=muted>(reported only)</span>"
                    if s.seeds > 1
                    else " <span class=muted>(study.confirm or <code>deepsc-tune repeat</code> adds seeds)</span>"
                ),
            ),
            ("against the runner-up", _e(s.leader or "-")),
            (f"{s.metric} (search trial)", f"{_f(s.best_value)} at epoch {_e(s.best_epoch)} of {_e(s.epochs_set)}"),
            ("validation accuracy / macro-F1", f"{_f(s.val_accuracy)} / {_f(s.val_macro_f1)}"),
            (
                "test accuracy / macro-F1",
                f"{_f(s.test_accuracy)} / {_f(s.test_macro_f1)} "
                "<span class=muted>(model of the best epoch; reported, never used for selection)</span>",
            ),
        ]
    c, r = s.counts, s.repeat_counts
    states = f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed"
    if c["RUNNING"] or c["WAITING"]:
        states += f", {c['RUNNING']} running, {c['WAITING']} waiting"
    rows.append(("search trials", states))
    if sum(r.values()):
        rows.append(
            (
                "repeats (other seeds)",
                f"{r['COMPLETE']} complete, {r['FAIL']} failed, {r['RUNNING'] + r['WAITING']} queued or running",
            )
        )
    b = s.budget
    saved = f"{b.saved} saved by pruning {b.pruned_trials} trials"
    if b.without_pruning:
        saved += f" ({100 * b.saved / b.without_pruning:.0f} % of {b.without_pruning} without pruning)"
    rows.append(("epochs trained", f"{b.trained}; {saved}"))
    table = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    out = f"<table>{table}</table>"
    if s.failed:
        items = "".join(
            f"<tr><td class=n>#{f.number}</td><td>{_e(f.reason.splitlines()[0][:300] if f.reason else '')}</td>"
            f"<td>{'re-queued as #' + str(f.retried_as) if f.retried_as is not None else ''}</td></tr>"
            for f in s.failed
        )
        out += f"<h3>Failed trials</h3><table><tr><th>trial</th><th>reason</th><th></th></tr>{items}</table>"
    if s.override_line:
        out += f"<h3>For DeepSC</h3><pre>{_e(s.override_line)}</pre><pre>{_e(s.yaml_block)}</pre>"
    return out


def _stability_html(rows: Sequence[StabilityRow], *, name: str = "NAME") -> str:
    head = (
        "<tr><th>trial</th><th>configuration</th><th>value</th>"
        f"<th>std over last {LAST_EPOCHS} epochs</th><th>seeds</th><th>mean ± std across seeds</th>"
        "<th>test accuracy across seeds</th></tr>"
    )
    body = "".join(
        f"<tr><td class=n>#{r.number}</td><td>{_e(r.label)}</td><td class=n>{_f(r.value)}</td>"
        f"<td class=n>{_f(r.last_epochs_std)}</td><td class=n>{len(r.runs)}</td>"
        f"<td class=n>{_pm(r.seed_mean, r.seed_std) if len(r.runs) > 1 else '-'}</td>"
        f"<td class=n>{_pm(r.test_accuracy_mean, r.test_accuracy_std)}</td></tr>"
        for r in rows
    )
    hint = ""
    if rows and all(len(r.runs) == 1 for r in rows):
        hint = (
            f"<p class=muted>No repeats yet: <code>deepsc-tune repeat {_e(name)} --top 3 --seeds 3</code> "
            "re-runs the best configurations with other seeds.</p>"
        )
    return f"<table>{head}{body}</table>{hint}"


def render_report(data: ReportData) -> str:
    """The self-contained HTML page (plotly.js inlined once, nothing fetched)."""
    s = data.summary
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    about = [
        data.description,
        f"data {data.dataset}" if data.dataset != "-" else "",
        f"metric {s.metric}",
        f"{len(data.trials)} trials",
        f"made {created}",
    ]
    head = (
        f"<h1>deepsc-tune report: {_e(s.study_name)}</h1>"
        f"<p class=sub>{' &middot; '.join(_e(a) for a in about if a)}</p>"
    )
    notes = "".join(f"<div class=note>{_e(n)}</div>" for n in data.notes)
    if s.finished == 0:
        body = head + notes + "<h2>Summary</h2>" + _summary_html(s)
        if data.curves:  # trials still running: their epochs so far
            body += "<h2>Learning curves so far</h2>" + _Page().figure(
                plot_curves(data.curves, metric=s.metric), "fig-curves"
            )
        return _html_page(f"{s.study_name}: deepsc-tune report", body)
    page = _Page()
    parts = [
        head,
        notes,
        "<h2>1. Learning rate frontier</h2>",
        "<p class=muted>Each finished trial at its best validation value (pruned: the last epoch it "
        "reached); the line is the best value reached at or below each learning rate.</p>",
        page.figure(plot_frontier(data.frontier, metric=s.metric), "fig-frontier"),
        "<h2>2. Learning curves</h2>",
        page.figure(plot_curves(data.curves, metric=s.metric), "fig-curves"),
        "<h2>3. Optimisation history</h2>",
        page.figure(plot_history(data.history, metric=s.metric), "fig-history"),
        "<h2>4. What mattered</h2><div class=grid>",
    ]
    if data.importances.values:
        why = "".join(f"<p class=muted>{_e(line)}</p>" for line in data.importances.explanations)
        parts.append(f"<div>{page.figure(plot_importances(data.importances), 'fig-importances')}{why}</div>")
    else:
        parts.append(f"<div class=note>{_e(data.importances.note)}</div>")
    if data.contour.note is None:
        parts.append(page.figure(plot_contour(data.contour, trials=data.trials, metric=s.metric), "fig-contour"))
    else:
        parts.append(f"<div class=note>{_e(data.contour.note)}</div>")
    parts += ["</div>", "<h2>5. Summary</h2>", _summary_html(s), "<h2>6. Stability</h2>"]
    if data.stability:
        parts += [
            page.figure(plot_stability(data.stability, metric=s.metric), "fig-stability"),
            _stability_html(data.stability, name=s.study_name),
        ]
    else:
        parts.append("<div class=note>no complete trial yet</div>")
    return _html_page(f"{s.study_name}: deepsc-tune report", "\n".join(parts))


# ============================================================================ files


class ReportFiles(NamedTuple):
    """What :func:`write_report` wrote, and what the page could not show yet."""

    html: Path
    csv: Path
    best_yaml: Path | None
    notes: list[str]
    data: ReportData


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file, so a browser or a copy never sees half a page."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_trials_csv(trials: Sequence[FrozenTrial], path: Path) -> Path:
    """``trials.csv``: one row per trial (see :data:`CSV_COLUMNS`)."""
    rows = trial_rows(trials)
    params = sorted({name for t in trials for name in t.params})
    columns = ["number", "state", *params, *CSV_COLUMNS]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    os.replace(tmp, path)
    return path


def write_report(
    study: optuna.Study,
    *,
    folder: Path,
    backend: str = "builtin",
    top: int = TOP_CONFIGS,
    record_dir: Path | None = None,
) -> ReportFiles:
    """Write ``report.html``, ``trials.csv`` and (once a trial completed) ``best.yaml`` to ``folder``
    (``record_dir``: the study's results folder, default ``folder``)."""
    data = build_report_data(study, backend=backend, top=top, record_dir=record_dir or folder)
    return write_report_files(data, folder=folder)


def write_report_files(data: ReportData, *, folder: Path) -> ReportFiles:
    """Write the files of :func:`write_report` from data already computed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / "report.html"
    page = render_report(data)
    from deepsc_tune.lr_find import report_section

    if section := report_section(folder):  # `deepsc-tune lr-find NAME` was run: link its plot
        head, end, tail = page.rpartition("</body>")
        page = head + section + end + tail
    _write_atomic(html_path, page)
    csv_path = write_trials_csv(data.trials, folder / "trials.csv")
    best_path: Path | None = folder / "best.yaml"
    if data.summary.yaml_block:
        _write_atomic(best_path, data.summary.yaml_block + "\n")
    else:
        best_path.unlink(missing_ok=True)  # a stale file would name a configuration of another study
        best_path = None
    return ReportFiles(html_path, csv_path, best_path, data.notes, data)


# ============================================================================ index


class IndexRow(NamedTuple):
    """One study in ``results/index.html``."""

    name: str
    dataset: str
    report: str  # relative link to the study's report
    trials: int
    scheduler: str | None
    learning_rate: float | None
    warmup_ratio: float | None
    epochs: int | None
    best_epoch: int | None
    val_accuracy: float | None
    val_macro_f1: float | None
    test_accuracy: float | None
    test_macro_f1: float | None
    stability: str  # "± 0.0123 over 3 seeds" or "± 0.0040 last 3 epochs"
    note: str | None


def stability_text(row: StabilityRow | None) -> str:
    """The spread of the best configuration: across seeds when repeated, else over last epochs."""
    if row is None:
        return "-"
    if row.seed_std is not None:
        return f"± {row.seed_std:.4f} over {len(row.runs)} seeds"
    if row.last_epochs_std is not None:
        return f"± {row.last_epochs_std:.4f} last {len(row.last_values)} epochs"
    return "-"


def index_row(data: ReportData, *, report: str) -> IndexRow:
    """The index row of one study's report data."""
    s = data.summary
    best = next((t for t in data.trials if t.number == s.best_number), None)
    stab = next((r for r in data.stability if r.number == s.best_number), None)
    return IndexRow(
        name=s.study_name,
        dataset=data.dataset,
        report=report,
        trials=len(search_only(data.trials)),
        scheduler=setting(best, "lr_scheduler_type") if best else None,
        learning_rate=setting(best, "learning_rate") if best else None,
        warmup_ratio=setting(best, "warmup_ratio")
        if best and setting(best, "lr_scheduler_type") != "constant"
        else None,
        epochs=s.epochs_set,
        best_epoch=s.best_epoch,
        val_accuracy=s.val_accuracy,
        val_macro_f1=s.val_macro_f1,
        test_accuracy=s.test_accuracy,
        test_macro_f1=s.test_macro_f1,
        stability=stability_text(stab),
        note=data.notes[0] if data.notes else None,
    )


def find_study_databases(results_dir: Path) -> list[Path]:
    """``RESULTS_DIR/*/study.db``, sorted by folder name."""
    return sorted(Path(results_dir).glob("*/study.db"))


def _where(row: IndexRow) -> str:
    folder = row.report.rsplit("/", 1)[0]
    return "" if folder == row.name else f" <span class=muted>({_e(folder)}/)</span>"


def render_index(rows: Sequence[IndexRow], *, errors: Sequence[tuple[str, str]] = ()) -> str:
    """``index.html``: the table DeepSC's guide keeps by hand, one row per study."""
    head = (
        "<tr><th>study</th><th>data</th><th>trials</th><th>scheduler</th><th>learning_rate</th>"
        "<th>warmup</th><th>epochs (best)</th><th>val acc</th><th>val macro-F1</th><th>test acc</th>"
        "<th>test macro-F1</th><th>stability</th></tr>"
    )
    body = "".join(
        f'<tr><td><a href="{_e(r.report)}">{_e(r.name)}</a>{_where(r)}</td><td>{_e(r.dataset)}</td>'
        f"<td class=n>{r.trials}</td><td>{_e(r.scheduler or '-')}</td>"
        f"<td class=n>{format_number(r.learning_rate)}</td><td class=n>{format_number(r.warmup_ratio)}</td>"
        f"<td class=n>{_e(r.epochs if r.epochs is not None else '-')} ({_e(r.best_epoch if r.best_epoch is not None else '-')})</td>"
        f"<td class=n>{_f(r.val_accuracy)}</td><td class=n>{_f(r.val_macro_f1)}</td>"
        f"<td class=n>{_f(r.test_accuracy)}</td><td class=n>{_f(r.test_macro_f1)}</td>"
        f"<td class=n>{_e(r.stability)}</td></tr>"
        + (f"<tr><td></td><td colspan=11 class=muted>{_e(r.note)}</td></tr>" if r.note else "")
        for r in rows
    )
    problems = "".join(f"<div class=note>{_e(name)}: {_e(msg)}</div>" for name, msg in errors)
    empty = "" if rows or errors else "<div class=note>no study found: run <code>deepsc-tune run NAME</code></div>"
    created = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    text = (
        f"<h1>deepsc-tune studies</h1><p class=sub>best configuration of each study (selected on "
        f"validation; test reported only) &middot; made {created}</p>{empty}{problems}"
        f"<table>{head}{body}</table>"
    )
    return _html_page("deepsc-tune studies", text)


class IndexFiles(NamedTuple):
    """What :func:`write_index` wrote."""

    html: Path
    rows: list[IndexRow]
    reports: list[ReportFiles]
    errors: list[tuple[str, str]]  # (study, reason) for studies that could not be read


def write_index(results_dir: Path, *, top: int = TOP_CONFIGS) -> IndexFiles:
    """Write the report of every study under ``RESULTS_DIR/*/study.db`` and ``RESULTS_DIR/index.html``.

    Each database is opened read only (no heartbeats), like ``deepsc-tune report NAME``. The
    report of study ``F`` in ``RESULTS_DIR/F/study.db`` (or of the only study there) goes to
    ``RESULTS_DIR/F/``; other studies in that database to ``RESULTS_DIR/F/<study name>/``. A
    database that cannot be read is listed with the reason instead of stopping the others.
    """
    from deepsc_tune.storage import open_storage

    results_dir = Path(results_dir)
    rows, reports, errors = [], [], []
    for db in find_study_databases(results_dir):
        try:
            storage = open_storage(f"sqlite:///{db}", heartbeat=False)
            names = optuna.get_all_study_names(storage)
        except Exception as e:  # a corrupt or foreign file: say so, go on with the others
            errors.append((db.parent.name, f"cannot read {db}: {str(e).splitlines()[0] if str(e) else e!r}"))
            continue
        for name in sorted(names, key=lambda n: (n != db.parent.name, n)):
            study = optuna.load_study(study_name=name, storage=storage)
            # the folder's own study (or its only one) reports next to study.db; others below it
            folder = db.parent if name == db.parent.name or len(names) == 1 else db.parent / name
            files = write_report(
                study, folder=folder, backend=study_backend(study.user_attrs), top=top, record_dir=db.parent
            )
            reports.append(files)
            rows.append(index_row(files.data, report=folder.relative_to(results_dir).as_posix() + "/report.html"))
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / "index.html"
    _write_atomic(path, render_index(rows, errors=errors))
    return IndexFiles(path, rows, reports, errors)


__all__ = [
    "ContourData",
    "Curve",
    "EnvelopeStep",
    "EpochBudget",
    "FrontierPoint",
    "Frontier",
    "HistoryPoint",
    "Importances",
    "IndexRow",
    "ReportData",
    "ReportFiles",
    "SeedRun",
    "StabilityRow",
    "Summary",
    "build_report_data",
    "contour_data",
    "envelope",
    "epoch_budget",
    "frontier_data",
    "learning_curves",
    "metric_value",
    "optimization_history",
    "param_importances",
    "stability_data",
    "summary_data",
    "trial_rows",
    "write_report",
    "write_report_files",
    "write_index",
    "write_trials_csv",
    "render_report",
    "render_index",
    "plot_frontier",
    "plot_curves",
    "plot_history",
    "plot_importances",
    "plot_contour",
    "plot_stability",
]
