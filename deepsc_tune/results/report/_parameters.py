"""What the searched parameters did, as plot data: their importances and the learning-rate x
warmup contour (no plotly; :mod:`deepsc_tune.results.report._figures` draws them).

Both are computed only from enough COMPLETE search trials; with fewer, one line says so
instead of a figure that would attribute noise (:data:`MIN_IMPORTANCE_TRIALS`,
:data:`MIN_CONTOUR_SHADING`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.study import search_only, setting

#: Below this many complete cosine trials there is no contour, one line instead: shading
#: interpolated from a handful of points paints the plane with values no trial measured.
MIN_CONTOUR_SHADING = 8
#: Below this many complete trials (that have every compared parameter) there are no
#: importances, one line instead: fANOVA over a handful of trials attributes noise.
MIN_IMPORTANCE_TRIALS = 10
#: Points per axis of the interpolated contour.
_CONTOUR_GRID = 60


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
    """Optuna's importances (its default evaluator) over COMPLETE search trials, or one line why not.

    Optuna compares only trials that have every compared parameter, so a parameter searched under
    a condition (``warmup_ratio`` when cosine) would narrow them to trials where the condition's
    parameter never varies, and its share would read 0. The parameters compared are therefore
    the largest set, dropping conditional ones, in which every parameter varies over the trials
    that have them all; the others are named in one line. No importances with fewer than
    :data:`MIN_IMPORTANCE_TRIALS` such trials, fewer than 2 such parameters, or no spread in value.
    """
    complete = [t for t in search_only(trials) if t.state == TrialState.COMPLETE and t.value is not None]
    names = sorted({name for t in complete for name in t.params})
    if len(names) < 2:
        return Importances({}, f"only {', '.join(names) or 'no parameter'} searched: no importances to compare")
    chosen, used = _compared(names, complete)
    if len(chosen) < 2 or len(used) < MIN_IMPORTANCE_TRIALS:
        return Importances(
            {},
            f"parameter importances need {MIN_IMPORTANCE_TRIALS} or more complete trials in which at least 2 "
            f"searched parameters vary ({len(used) if len(chosen) >= 2 else 0} so far): not drawn",
        )
    if len({t.value for t in used}) < 2:
        return Importances({}, "every complete trial reached the same value: no importances to attribute")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = optuna.importance.get_param_importances(_study_of(used), params=list(chosen))
    except Exception as e:  # Optuna's evaluators refuse some degenerate studies
        return Importances({}, f"importances could not be computed: {type(e).__name__}: {e}")
    left_out = [n for n in names if n not in chosen]
    lines = ()
    if left_out:
        lines = (
            f"over the {len(used)} complete trials that have {', '.join(chosen)}; "
            f"{', '.join(left_out)} left out (searched under a condition, or never varied there)",
        )
    return Importances({k: float(v) for k, v in values.items()}, None, lines)


def _compared(names: Sequence[str], complete: Sequence[FrozenTrial]) -> tuple[tuple[str, ...], list[FrozenTrial]]:
    """The parameter set importances compare: most trials, then most parameters, every one varying."""
    import itertools

    always = [n for n in names if all(n in t.params for t in complete)]
    optional = [n for n in names if n not in always]
    best: tuple[tuple[str, ...], list[FrozenTrial]] = ((), [])
    for k in range(len(optional), -1, -1):
        for extra in itertools.combinations(optional, k):
            chosen = tuple(sorted([*always, *extra]))
            used = [t for t in complete if all(n in t.params for n in chosen)]
            varied = tuple(n for n in chosen if len({repr(t.params[n]) for t in used}) > 1)
            if len(varied) >= 2 and (len(used), len(varied)) > (len(best[1]), len(best[0])):
                best = (varied, [t for t in complete if all(n in t.params for n in varied)])
    return best


class ContourData(NamedTuple):
    """COMPLETE cosine search trials: learning_rate, warmup_ratio and metric value."""

    numbers: tuple[int, ...]
    learning_rate: tuple[float, ...]
    warmup_ratio: tuple[float, ...]
    values: tuple[float, ...]
    note: str | None


def contour_data(
    trials: Sequence[FrozenTrial], *, scheduler: str = "cosine", fixed: Mapping[str, Any] | None = None
) -> ContourData:
    """Points for the learning_rate x warmup_ratio contour of ``scheduler`` trials.

    COMPLETE search trials that searched both parameters; one line instead of a contour when
    fewer than :data:`MIN_CONTOUR_SHADING` (a handful of points shows nothing a contour could).
    """
    rows = [
        (t.number, float(t.params["learning_rate"]), float(t.params["warmup_ratio"]), float(t.value))
        for t in search_only(trials)
        if t.state == TrialState.COMPLETE
        and t.value is not None
        and setting(t, "lr_scheduler_type", fixed=fixed) == scheduler
        and "learning_rate" in t.params
        and "warmup_ratio" in t.params
    ]
    note = None
    if len(rows) < MIN_CONTOUR_SHADING:
        note = (
            f"the learning_rate x warmup_ratio contour needs {MIN_CONTOUR_SHADING} or more complete "
            f"{scheduler} trials ({len(rows)} so far): not drawn; the frontier shows them"
        )
    if not rows:
        return ContourData((), (), (), (), note)
    numbers, lrs, warmups, values = zip(*rows)
    return ContourData(numbers, lrs, warmups, values, note)


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
