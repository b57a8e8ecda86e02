"""report.py: the contour shades only where trials are, importances say what a share means,
the stability hint names the study."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from deepsc_tune.report import (
    MIN_CONTOUR_SHADING,
    ContourData,
    _stability_html,
    contour_grid,
    param_importances,
    plot_contour,
)

LR = FloatDistribution(1e-4, 1e-2, log=True)
WARMUP = FloatDistribution(0.0, 0.2)
SCHED = CategoricalDistribution(["constant", "cosine"])


def _contour(n: int) -> ContourData:
    angles = np.linspace(0, 2 * math.pi, n, endpoint=False)
    lrs = tuple(float(10 ** (-3 + 0.5 * math.cos(a))) for a in angles)
    warm = tuple(float(0.1 + 0.05 * math.sin(a)) for a in angles)
    return ContourData(tuple(range(n)), lrs, warm, tuple(float(0.5 + 0.01 * i) for i in range(n)), None)


def test_few_points_are_drawn_without_shading():
    contour = _contour(MIN_CONTOUR_SHADING - 1)
    assert contour_grid(contour) is None
    fig = plot_contour(contour)
    assert [t.type for t in fig.data] == ["scatter"]
    assert f"shading from {MIN_CONTOUR_SHADING} trials on" in fig.layout.title.text


def test_shading_stays_inside_the_trials_hull():
    contour = _contour(12)  # points on a circle: the grid's corners lie outside it
    gx, gy, z = contour_grid(contour)
    assert np.isnan(z[0, 0]) and np.isnan(z[-1, -1]) and np.isnan(z[0, -1])
    middle = z[len(gy) // 2, len(gx) // 2]
    assert min(contour.values) <= middle <= max(contour.values)
    fig = plot_contour(contour)
    assert [t.type for t in fig.data] == ["contour", "scatter"]


def test_contour_title_sits_below_the_toolbar():
    fig = plot_contour(_contour(12))
    assert fig.layout.title.yref == "paper" and fig.layout.title.yanchor == "bottom"
    assert fig.layout.margin.t >= 70


def _trial(number, params, value, state=TrialState.COMPLETE):
    dists = {"lr_scheduler_type": SCHED, "learning_rate": LR, "warmup_ratio": WARMUP}
    t = create_trial(
        params=params,
        distributions={k: dists[k] for k in params},
        value=value if state == TrialState.COMPLETE else None,
        state=state,
    )
    t.number = number
    return t


@pytest.mark.parametrize("constant_state", [TrialState.PRUNED, TrialState.COMPLETE])
def test_importances_explain_conditional_and_constant_parameters(constant_state):
    cosine = [
        _trial(
            i,
            {"lr_scheduler_type": "cosine", "learning_rate": 10 ** (-4 + i / 3), "warmup_ratio": 0.02 * i},
            0.5 + 0.03 * i,
        )
        for i in range(6)
    ]
    constant = [
        _trial(6 + i, {"lr_scheduler_type": "constant", "learning_rate": 1e-3 * (i + 1)}, 0.6, constant_state)
        for i in range(2)
    ]
    result = param_importances(cosine + constant)
    text = " ".join(result.explanations)
    # Optuna uses only the trials with every parameter: the cosine ones, where the scheduler never
    # varies; its share is ~0 either way, and the page says why.
    assert result.values["lr_scheduler_type"] < 0.01
    assert "lr_scheduler_type is 'cosine' in all 6 of those trials" in text
    if constant_state == TrialState.PRUNED:
        assert "all 6 complete trials, the only ones that have warmup_ratio" in text
    else:
        assert "the 6 of the 8 complete trials that have warmup_ratio" in text


def test_stability_hint_names_the_study():
    class Row:
        number, label, value, last_epochs_std = 0, "x", 0.5, 0.0
        runs = (object(),)
        seed_mean = seed_std = test_accuracy_mean = test_accuracy_std = None

    html = _stability_html([Row()], name="baron")
    assert "deepsc-tune repeat baron --top 3" in html and "repeat NAME" not in html
