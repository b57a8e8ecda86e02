"""The report's plotly figures, each drawn from the plot data of :mod:`deepsc_tune.results.report._data`.

One ``plot_*`` function per figure, as Optuna's ``_get_*_plot`` functions: they see only the
NamedTuples computed there, never a study. plotly is imported when a figure is drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from deepsc_tune.results.report._data import LAST_EPOCHS, Curve, Frontier, HistoryPoint, StabilityRow, config_label
from deepsc_tune.results.report._parameters import ContourData, Importances, contour_grid

if TYPE_CHECKING:  # the figures see plot data only; a trial list is accepted and unused
    from optuna.trial import FrozenTrial

#: One colour per scheduler type (others get the next colour of ``EXTRA_COLOURS``).
SCHEDULER_COLOURS = {"constant": "#1f77b4", "cosine": "#ff7f0e", "cosine_restarts": "#2ca02c"}
EXTRA_COLOURS = ("#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PRUNED_COLOUR = "#b0b0b0"
BEST_COLOUR = "#d62728"
TEMPLATE = "plotly_white"
#: One tick notation for every log axis of the page (1e-4, not 100µ or 10^-4).
EXPONENT_FORMAT = "e"


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
    """Metric against learning rate (log x) per scheduler: COMPLETE trials filled, PRUNED hollow,
    the best COMPLETE trial per LR bin joined as a line, the chosen configuration starred, chance
    and the baseline as horizontal lines, the usage guide's configs labelled."""
    import plotly.graph_objects as go

    fig = go.Figure()
    order = list(frontier.points)
    for scheduler, points in frontier.points.items():
        colour = scheduler_colour(scheduler, order)
        line = frontier.lines.get(scheduler) or []
        if line:
            fig.add_trace(
                go.Scatter(
                    x=[s.learning_rate for s in line],
                    y=[s.value for s in line],
                    mode="lines",
                    line={"color": colour, "width": 2},
                    name=f"{scheduler}: best complete per LR bin",
                    legendgroup=scheduler,
                    hoverinfo="skip",
                )
            )
        for state, symbol, opacity in (("COMPLETE", "circle", 0.95), ("PRUNED", "circle-open", 0.7)):
            shown = [p for p in points if p.state == state]
            if not shown:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[p.learning_rate for p in shown],
                    y=[p.value for p in shown],
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
                    customdata=[[p.number, config_label(p.params), _point_note(p)] for p in shown],
                    hovertemplate="trial %{customdata[0]}: %{customdata[1]}<br>"
                    + metric
                    + " %{y:.4f}%{customdata[2]}<extra>"
                    + state.lower()
                    + "</extra>",
                )
            )
    confirmed = [p for ps in frontier.points.values() for p in ps if p.seeds > 1]
    if confirmed:  # a ring around configurations re-run with other seeds, at their mean
        fig.add_trace(
            go.Scatter(
                x=[p.learning_rate for p in confirmed],
                y=[p.value for p in confirmed],
                mode="markers",
                name="confirmed (mean over seeds)",
                marker={"symbol": "circle-open", "size": 18, "color": "#222", "line": {"width": 2}},
                customdata=[[p.number, p.seeds, _sd_text(p)] for p in confirmed],
                hovertemplate="trial %{customdata[0]}: mean of %{customdata[1]} seeds%{customdata[2]}<extra></extra>",
            )
        )
    chosen = next((p for ps in frontier.points.values() for p in ps if p.number == frontier.chosen), None)
    if chosen is not None:
        text = f"chosen: {config_label(chosen.params)}"
        if chosen.seeds > 1:
            text += f" ({chosen.value:.3f}{_sd_text(chosen)}, n={chosen.seeds})"
        fig.add_trace(
            go.Scatter(
                x=[chosen.learning_rate],
                y=[chosen.value],
                mode="markers",
                name=text,
                marker={"symbol": "star", "size": 20, "color": BEST_COLOUR, "line": {"width": 1, "color": "#222"}},
                hovertemplate=text + "<br>" + metric + " %{y:.4f}<extra></extra>",
            )
        )
    for level, name, dash in (
        (frontier.chance, "chance (majority class)", "dot"),
        (frontier.baseline, "logistic regression", "dash"),
    ):
        if level is not None:
            fig.add_hline(
                y=level,
                line={"color": "#555", "dash": dash, "width": 1.5},
                annotation_text=f"{name} {level:.3f}",
                annotation_position="bottom right",
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
    fig.update_xaxes(type="log", title="learning_rate", exponentformat=EXPONENT_FORMAT)
    fig.update_yaxes(title=f"best {metric} (hollow: last epoch run)")
    return _layout(fig, title="Learning rate frontier", height=480)


def _sd_text(p) -> str:
    return "" if p.sd is None else f" ± {p.sd:.3f}"


def _point_note(p) -> str:
    if p.state == "PRUNED":
        return f"<br>pruned after epoch {p.epochs}"
    if p.seeds > 1:
        return f"<br>mean of {p.seeds} seeds{_sd_text(p)}"
    return ""


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


def plot_contour(contour: ContourData, *, trials: Sequence[FrozenTrial] = (), metric: str = "val_accuracy"):
    """The cosine trials on learning_rate x warmup_ratio, coloured by value; shaded only inside
    the region they span (:func:`~deepsc_tune.results.report._parameters.contour_data` gives no contour below
    :data:`~deepsc_tune.results.report._parameters.MIN_CONTOUR_SHADING` trials)."""
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
    fig.update_xaxes(type="log", title="learning_rate", exponentformat=EXPONENT_FORMAT)
    fig.update_yaxes(title="warmup_ratio")
    fig = _layout(fig, title="Cosine trials: learning_rate x warmup_ratio", height=460, showlegend=False)
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


__all__ = [
    "SCHEDULER_COLOURS",
    "plot_contour",
    "plot_curves",
    "plot_frontier",
    "plot_history",
    "plot_importances",
    "plot_stability",
    "scheduler_colour",
]
