"""The data of every report plot, computed from a study's trials: plain NamedTuples, no plotly.

As in Optuna's own plots (``optuna/visualization/_contour.py``: ``_get_contour_info`` computes,
``_get_contour_plot`` draws), each figure of the report has a function here that computes its data
(``frontier_data``, ``learning_curves``, ``optimization_history``, ``epoch_budget``,
``stability_data``; the parameters' importances and contour in
:mod:`deepsc_tune.results.report._parameters`), and one in
:mod:`deepsc_tune.results.report._figures` that draws it. Tests check the data; the figures are only drawing.

Definitions used throughout:

- A trial's *metric value* is ``trial.value`` (the best validation metric over the epochs run)
  for a COMPLETE trial, and the last reported intermediate value for a PRUNED (or RUNNING) one;
  failed trials have none.
- The *frontier line* of one scheduler type joins the best COMPLETE trial of each log-spaced
  learning-rate bin (a third of a decade wide), at that trial's learning rate: it follows the data
  up and down, so a learning rate that is too high shows as a drop. PRUNED trials are drawn
  hollow at the epoch they reached and never shape the line.
- *Epochs saved* by pruning: for each PRUNED trial, the epochs it was set to run (its ``epoch``
  setting) minus the epochs it ran.
- *Search trials* leave out the repeats made by ``deepsc-tune repeat`` or ``study.confirm``
  (``repeat_of``); repeats appear in the summary (the chosen configuration's mean ± sd over seeds,
  :mod:`deepsc_tune.study._selection`), as rings on the frontier (moved to their mean over seeds), in the stability section, the counts
  and ``trials.csv``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.study import (
    ENQUEUED,
    complete_repeats,
    configurations,
    epochs_run,
    is_repeat,
    metric_value,
    rank_configurations,
    search_only,
    seed_of,
    select,
    setting,
    trial_result,
)

#: Default number of best configurations shown in the stability section.
TOP_CONFIGS = 5
#: Epochs at the end of a learning curve whose spread measures epoch-to-epoch stability.
LAST_EPOCHS = 3
#: Label of trials whose learning-rate schedule is not a searched or fixed setting.
NO_SCHEDULER = "(fixed)"


def epochs_set(trial: FrozenTrial, default: int | None = None, *, fixed: Mapping[str, Any] | None = None) -> int | None:
    """Epochs the trial was set to run (its ``epoch`` setting; ``fixed``: the search space's fixed
    settings, ``default``: the study's ``epoch`` where those are not known)."""
    n = setting(trial, "epoch", default, fixed=fixed)
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
    value: float  # COMPLETE: the mean over seeds when repeated; PRUNED: the last epoch's value
    state: str  # "COMPLETE" or "PRUNED"
    label: str | None  # "guide: constant 1e-4" for the usage guide's enqueued configs
    params: dict[str, Any]
    seeds: int = 1  # COMPLETE runs of this configuration (search trial + repeats); > 1: confirmed
    sd: float | None = None  # sample sd over seeds (``seeds`` > 1)
    epochs: int | None = None  # epochs run (a PRUNED trial: the epoch it reached)


class LineStep(NamedTuple):
    """One vertex of a frontier line: the best COMPLETE trial of one learning-rate bin."""

    learning_rate: float
    value: float
    number: int


class Frontier(NamedTuple):
    """Points per scheduler type, their lines (both keyed by scheduler, in LR order), the chosen
    configuration and the reference levels (``None`` where the study has none)."""

    points: dict[str, list[FrontierPoint]]
    lines: dict[str, list[LineStep]]
    chosen: int | None = None  # the selected configuration's search trial
    chance: float | None = None  # the study metric of always predicting the majority class
    baseline: float | None = None  # logistic regression on the same cells (study attr ``baseline``)


#: Bins per decade of learning rate for the frontier line (a third of a decade each).
BINS_PER_DECADE = 3


def frontier_line(points: Sequence[FrontierPoint], *, bins_per_decade: int = BINS_PER_DECADE) -> list[LineStep]:
    """The best COMPLETE point of each log-spaced learning-rate bin, in LR order.

    Bins are ``1 / bins_per_decade`` of a decade wide (edges at ``10 ** (k / bins_per_decade)``).
    Each bin contributes its best point (the lowest trial number on ties) at that point's own
    learning rate, so the line goes down where higher learning rates did worse. PRUNED points
    never shape it: their values are from fewer epochs.
    """
    best: dict[int, FrontierPoint] = {}
    for p in points:
        if p.state != "COMPLETE" or p.learning_rate <= 0:
            continue
        k = math.floor(math.log10(p.learning_rate) * bins_per_decade + 1e-9)
        q = best.get(k)
        if q is None or (p.value, -p.number) > (q.value, -q.number):
            best[k] = p
    return [LineStep(p.learning_rate, p.value, p.number) for _, p in sorted(best.items())]


def frontier_data(
    trials: Sequence[FrozenTrial],
    *,
    metric: str | None = None,
    chance: Mapping[str, Any] | None = None,
    baseline: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> Frontier:
    """Learning rate against metric value for finished search trials, grouped by scheduler type.

    COMPLETE trials at ``trial.value`` (at the mean over seeds when the configuration has COMPLETE
    repeats), PRUNED ones at their last intermediate value with the epoch reached; trials with no
    learning rate or no value are left out. The usage guide's configs (``enqueued``) get a
    ``label`` such as ``guide: cosine 1e-4 warmup 0.03``. ``chance`` (the study's ``val_chance``)
    and ``baseline`` (its ``baseline``) give the reference levels of ``metric``; ``fixed``: the
    search space's fixed settings (a fixed learning rate or scheduler).
    """
    points: dict[str, list[FrontierPoint]] = {}
    configs = {c.number: c for c in configurations(trials)}
    for t in search_only(trials):
        if t.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        lr, value = setting(t, "learning_rate", fixed=fixed), metric_value(t)
        if lr is None or value is None:
            continue
        scheduler = str(setting(t, "lr_scheduler_type", NO_SCHEDULER, fixed=fixed))
        label = f"guide: {config_label(t.params)}" if t.user_attrs.get(ENQUEUED) else None
        c = configs.get(t.number)
        seeds, sd = (c.n, c.sd) if c is not None and c.n > 1 else (1, None)
        if seeds > 1:
            value = c.mean  # a confirmed configuration stands at its mean over seeds
        points.setdefault(scheduler, []).append(
            FrontierPoint(
                t.number,
                scheduler,
                float(lr),
                float(value),
                t.state.name,
                label,
                dict(t.params),
                seeds,
                sd,
                epochs_run(t),
            )
        )
    points = {k: sorted(v, key=lambda p: (p.learning_rate, p.number)) for k, v in sorted(points.items())}
    chosen = select(trials).best
    return Frontier(
        points=points,
        lines={k: frontier_line(v) for k, v in points.items()},
        chosen=None if chosen is None else chosen.number,
        chance=_level(chance, metric),
        baseline=_level(baseline, _bare(metric)),
    )


def _bare(metric: str | None) -> str | None:
    """``macro_f1`` for ``val_macro_f1``: the baseline's validation values use the bare names."""
    return None if metric is None else metric.removeprefix("val_")


def _level(levels: Mapping[str, Any] | None, key: str | None) -> float | None:
    if not isinstance(levels, Mapping) or key is None:
        return None
    value = levels.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


class Curve(NamedTuple):
    """Validation metric per epoch of one search trial."""

    number: int
    state: str
    scheduler: str
    epochs: tuple[int, ...]
    values: tuple[float, ...]
    is_best: bool


def learning_curves(trials: Sequence[FrozenTrial], *, fixed: Mapping[str, Any] | None = None) -> list[Curve]:
    """Intermediate values of every search trial that reported any (running ones included;
    ``fixed``: the search space's fixed settings)."""
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
                scheduler=str(setting(t, "lr_scheduler_type", NO_SCHEDULER, fixed=fixed)),
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
    trials: Sequence[FrozenTrial],
    *,
    top: int = TOP_CONFIGS,
    last: int = LAST_EPOCHS,
    fixed: Mapping[str, Any] | None = None,
) -> list[StabilityRow]:
    """The ``top`` best COMPLETE search trials, with their epoch-to-epoch and seed-to-seed spread
    (``fixed``: the search space's fixed settings, whose seed the search trials ran with).

    ``last_epochs_std`` is the population standard deviation of the metric over the last ``last``
    epochs the trial ran (fewer if it ran fewer). ``seed_std`` is the sample standard deviation of
    the best validation metric across the original trial and its COMPLETE repeats
    (``repeat_of`` = its number), ``None`` until a repeat has completed.
    """
    ranked = [c.trial for c in rank_configurations(trials)][:top]
    repeats = complete_repeats(trials)
    rows = []
    for t in ranked:
        epochs = sorted(t.intermediate_values)[-last:]
        last_values = tuple(float(t.intermediate_values[e]) for e in epochs)
        runs = [_seed_run(t, fixed)] + [
            _seed_run(r, fixed)
            for r in sorted(repeats.get(t.number, []), key=lambda r: (seed_of(r, fixed) or 0, r.number))
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


def _seed_run(t: FrozenTrial, fixed: Mapping[str, Any] | None) -> SeedRun:
    result = trial_result(t)
    return SeedRun(t.number, seed_of(t, fixed), float(t.value), result.test_accuracy, result.test_macro_f1)


def best_trial(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The chosen configuration's search trial: by the mean over seeds (:mod:`deepsc_tune.study._selection`).

    Without repeats, the best COMPLETE search trial (lowest number on ties), as
    ``study.best_search_trial``.
    """
    best = select(trials).best
    return best.trial if best is not None else None


__all__ = [
    "LAST_EPOCHS",
    "NO_SCHEDULER",
    "TOP_CONFIGS",
    "Curve",
    "EpochBudget",
    "Frontier",
    "FrontierPoint",
    "HistoryPoint",
    "LineStep",
    "SeedRun",
    "StabilityRow",
    "best_trial",
    "config_label",
    "frontier_line",
    "epoch_budget",
    "epochs_set",
    "format_number",
    "frontier_data",
    "is_repeat",
    "learning_curves",
    "metric_value",
    "optimization_history",
    "search_only",
    "stability_data",
]
