"""report_figures.py: the frontier rings confirmed configurations, the contour shades only where
trials are and keeps its title clear of the toolbar."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest

from deepsc_tune.results.report._data import frontier_data
from deepsc_tune.results.report._figures import plot_contour, plot_frontier
from deepsc_tune.results.report._parameters import MIN_CONTOUR_SHADING, ContourData, contour_grid

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_frontier_marks_confirmed_configurations(synthetic):
    """Trial 5 ran with 3 seeds (itself and 2 COMPLETE repeats; the FAIL one does not count)."""
    points = {p.number: p for ps in frontier_data(synthetic.trials).points.values() for p in ps}
    assert points[5].seeds == 3
    assert all(p.seeds == 1 for n, p in points.items() if n != 5)
    from deepsc_tune.study._selection import configurations

    config = next(c for c in configurations(synthetic.trials) if c.number == 5)
    assert points[5].value == pytest.approx(config.mean)  # moved to the mean over seeds
    assert points[5].sd == pytest.approx(config.sd)
    fig = plot_frontier(frontier_data(synthetic.trials))
    ring = [tr for tr in fig.data if tr.name == "confirmed (mean over seeds)"]
    assert len(ring) == 1 and list(ring[0].customdata[0])[:2] == [5, 3]
    assert ring[0].y[0] == pytest.approx(config.mean)


def test_frontier_figure_draws_pruned_hollow_the_chosen_star_and_reference_lines(synthetic):
    frontier = frontier_data(
        synthetic.trials, metric="val_accuracy", chance={"val_accuracy": 0.3}, baseline={"accuracy": 0.8}
    )
    fig = plot_frontier(frontier)
    pruned = [tr for tr in fig.data if tr.name and tr.name.endswith("(pruned)")]
    assert pruned and all(tr.marker.symbol == "circle-open" for tr in pruned)
    stars = [tr for tr in fig.data if tr.marker is not None and tr.marker.symbol == "star"]
    chosen = next(p for ps in frontier.points.values() for p in ps if p.number == frontier.chosen)
    assert len(stars) == 1 and stars[0].x[0] == chosen.learning_rate and stars[0].y[0] == chosen.value
    levels = sorted(shape.y0 for shape in fig.layout.shapes)
    assert levels == [0.3, 0.8]
    assert fig.layout.xaxis.exponentformat == "e"


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
