"""The LR range test of DeepSC's usage guide, as one short pass (``deepsc-tune lr-find NAME``).

Their guide runs a shell loop over ``learning_rate in 1e-5 5e-5 1e-4 5e-4`` with 5 epochs each.
Here the trials' own training step (:func:`deepsc_tune.backends.builtin._train.run_range_test`: the same model,
loss, ``grad_acc``, clipping, precision, ``init_checkpoint`` and freezing) runs with a schedule
that raises the learning rate exponentially from ``min_lr`` to ``max_lr``, and records the
training loss of every optimizer step; it stops early once the smoothed loss exceeds
:data:`DIVERGE_FACTOR` times its minimum (the rate is too high from there on).

Suggested range (:func:`suggest_range`), on the smoothed loss against log10(lr):

- ``low``: the rate where the loss falls fastest (steepest negative slope) divided by
  :data:`LOW_DIVISOR` -- below it the model learns slowly;
- ``high``: the rate of the lowest loss divided by :data:`HIGH_DIVISOR` -- at the minimum the
  rate is already about to make training unstable.

Only training cells are used (never validation or test). Plot data first
(:class:`LRFindResult`), the figure second (:func:`plot_lr_find`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deepsc_tune.errors import ConfigError, FinetuneError
from deepsc_tune.study import LR_FIND_HTML, LR_FIND_JSON
from deepsc_tune.utils import write_text

SMOOTHING = 0.9  # exponential moving average of the loss (bias-corrected)
DIVERGE_FACTOR = 4.0
LOW_DIVISOR = 3.0
HIGH_DIVISOR = 2.0
MIN_STEPS = 10


@dataclass
class LRFindResult:
    """Learning rate and loss of every step, and the suggested range."""

    learning_rates: list[float]
    losses: list[float]  # raw training loss of each step
    smoothed: list[float]
    steepest_lr: float | None
    min_loss_lr: float | None
    low: float | None
    high: float | None
    stopped_early: bool
    note: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_bounds(min_lr: float, max_lr: float, steps: int) -> None:
    """Raise :class:`ConfigError` for a range or step count the test cannot use."""
    if not (min_lr > 0 and max_lr > 0):
        raise ConfigError(f"--min-lr/--max-lr: expected positive rates, got {min_lr:g} and {max_lr:g}")
    if not min_lr < max_lr:
        raise ConfigError(f"--min-lr: expected less than --max-lr ({max_lr:g}), got {min_lr:g}")
    if steps < MIN_STEPS:
        raise ConfigError(f"--steps: expected at least {MIN_STEPS}, got {steps}")


def suggest_range(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None, str | None]:
    """``(steepest_lr, min_loss_lr, note)`` from the smoothed curve (see the module docstring)."""
    finite = [(lr, v) for lr, v in zip(lrs, smoothed) if math.isfinite(v)]
    if len(finite) < 3:
        return None, None, "too few steps with a finite loss to suggest a range"
    lr_min = min(finite, key=lambda p: p[1])[0]
    upto = [p for p in finite if p[0] <= lr_min]
    # Slopes over a few steps, not between neighbours: the per-step loss is noisy.
    gap = max(1, len(finite) // 20)
    slopes = [
        ((b[1] - a[1]) / (math.log10(b[0]) - math.log10(a[0])), a[0]) for a, b in zip(upto, upto[gap:]) if b[0] > a[0]
    ]
    if not slopes or min(slopes)[0] >= 0:
        return None, lr_min, "the loss never fell: raise --max-lr or check the data"
    return min(slopes)[1], lr_min, None


def run_lr_find(
    data: Any, settings: Any, *, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100
) -> LRFindResult:
    """``steps`` optimizer steps of the trials' own training step with an exponentially rising rate.

    ``settings`` is the study's :class:`~deepsc_tune.backends.builtin._settings.TrainSettings`: model, batch
    size, ``grad_acc``, loss, precision, ``init_checkpoint``, ``finetune_mode``, seed and device
    apply as in a trial (:func:`deepsc_tune.backends.builtin._train.run_range_test`); only the schedule differs.
    """
    from deepsc_tune.backends.builtin import ExponentialRange, run_range_test

    check_bounds(min_lr, max_lr, steps)
    lrs, losses, smoothed = [], [], []
    state = {"avg": 0.0, "best": math.inf, "stopped": False}

    def on_step(lr: float, value: float) -> bool:
        state["avg"] = SMOOTHING * state["avg"] + (1 - SMOOTHING) * value
        smooth = state["avg"] / (1 - SMOOTHING ** (len(lrs) + 1))
        lrs.append(lr)
        losses.append(value)
        smoothed.append(smooth)
        if not math.isfinite(value):
            state["stopped"] = True
            return True
        state["best"] = min(state["best"], smooth)
        if len(lrs) > MIN_STEPS and smooth > DIVERGE_FACTOR * state["best"]:
            state["stopped"] = True
        return state["stopped"]

    run_range_test(data, settings, schedule=ExponentialRange(min_lr, max_lr, steps), steps=steps, on_step=on_step)
    if not lrs:
        raise FinetuneError("lr-find ran no step: no training cells")
    steepest, lr_min, note = suggest_range(lrs, smoothed)
    low = steepest / LOW_DIVISOR if steepest else None
    high = lr_min / HIGH_DIVISOR if lr_min else None
    if low is not None and high is not None and not low < high:
        low, high, note = None, None, "the steepest descent and the minimum are too close to suggest a range"
    return LRFindResult(lrs, losses, smoothed, steepest, lr_min, low, high, bool(state["stopped"]), note)


def override_line(result: LRFindResult) -> str | None:
    """The overrides that give a study the suggested range."""
    if result.low is None or result.high is None:
        return None
    # The guide's enqueued configurations (learning_rate 1e-4) may fall outside the range.
    return f"search.learning_rate.low={result.low:.3g} search.learning_rate.high={result.high:.3g} 'study.enqueue=[]'"


def plot_lr_find(result: LRFindResult, *, title: str):
    """Loss against learning rate (log x), the suggested range shaded."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=result.learning_rates,
            y=result.losses,
            mode="markers",
            name="loss per step",
            marker={"size": 4, "color": "#bbb"},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=result.learning_rates,
            y=result.smoothed,
            mode="lines",
            name="smoothed",
            line={"color": "#1f77b4", "width": 2},
        )
    )
    if result.low is not None and result.high is not None:
        fig.add_vrect(
            x0=result.low,
            x1=result.high,
            fillcolor="#2ca02c",
            opacity=0.15,
            line_width=0,
            annotation_text="suggested learning_rate",
            annotation_position="top left",
        )
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        fig.update_yaxes(range=[0, min(max(finite), DIVERGE_FACTOR * min(finite)) * 1.1])
    fig.update_xaxes(type="log", title="learning_rate")
    fig.update_yaxes(title="training loss")
    fig.update_layout(
        title={"text": title, "x": 0.01, "y": 1, "yref": "paper", "yanchor": "bottom", "pad": {"b": 8}},
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 80, "b": 50},
    )
    return fig


def write_lr_find(result: LRFindResult, folder: Path, *, name: str, settings: Mapping[str, Any]) -> tuple[Path, Path]:
    """``FOLDER/lr_find.html`` (self-contained) and ``lr_find.json``."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    fig = plot_lr_find(result, title=f"{name}: LR range test ({len(result.learning_rates)} steps)")
    html = folder / LR_FIND_HTML
    write_text(html, fig.to_html(full_html=True, include_plotlyjs=True))
    data = folder / LR_FIND_JSON
    write_text(
        data,
        json.dumps({**result.to_dict(), "override": override_line(result), "settings": dict(settings)}, indent=1)
        + "\n",
    )
    return html, data


def report_section(folder: Path) -> str:
    """HTML for the study report: the LR range test of ``folder`` (a link and its suggestion)."""
    import html
    import json

    try:
        doc = json.loads((Path(folder) / LR_FIND_JSON).read_text())
    except (OSError, ValueError):
        return ""
    if doc.get("low") is not None and doc.get("high") is not None:
        found = (
            f"suggested learning_rate range {doc['low']:.3g} to {doc['high']:.3g} (steepest descent at "
            f"{doc['steepest_lr']:.3g}, lowest loss at {doc['min_loss_lr']:.3g}); overrides: "
            f"<code>{html.escape(doc.get('override') or '')}</code>"
        )
    else:
        found = html.escape(doc.get("note") or "no range suggested")
    return (
        f'<h2>LR range test</h2><p><a href="{LR_FIND_HTML}">loss against learning rate</a> '
        f"(<code>deepsc-tune lr-find</code>, {len(doc.get('learning_rates') or [])} steps): {found}</p>"
    )
