"""report_figures.py: the frontier rings confirmed configurations, the contour shades only where
trials are and keeps its title clear of the toolbar."""

from __future__ import annotations

import math

import numpy as np
import optuna

from deepsc_tune.report_data import MIN_CONTOUR_SHADING, ContourData, contour_grid, frontier_data
from deepsc_tune.report_figures import plot_contour, plot_frontier

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_frontier_marks_confirmed_configurations(synthetic):
    """Trial 5 ran with 3 seeds (itself and 2 COMPLETE repeats; the FAIL one does not count)."""
    points = {p.number: p for ps in frontier_data(synthetic.trials).points.values() for p in ps}
    assert points[5].seeds == 3
    assert all(p.seeds == 1 for n, p in points.items() if n != 5)
    fig = plot_frontier(frontier_data(synthetic.trials))
    ring = [tr for tr in fig.data if tr.name == "confirmed (several seeds)"]
    assert len(ring) == 1 and list(ring[0].customdata[0]) == [5, 3]


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
