"""``report.html`` and ``index.html``: the report's figures and tables in the page templates.

The pages are :class:`string.Template` files in ``deepsc_tune/results/report/templates/`` (installed with the
package): ``page.html`` (the HTML shell and its style, shared by both pages), ``report.html`` (the
sections of a study with finished trials), ``report_unfinished.html`` (a study with none yet) and
``index.html``. Every value put into a page is HTML-escaped here; the tables are built here from
the report's data (:mod:`deepsc_tune.results.report._summary`), the figures drawn by
:mod:`deepsc_tune.results.report._figures`. The page is self-contained: plotly.js is inlined once.
"""

from __future__ import annotations

import datetime
import functools
import html
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from deepsc_tune.results.report._data import LAST_EPOCHS, StabilityRow, config_label, format_number
from deepsc_tune.results.report._figures import (
    plot_contour,
    plot_curves,
    plot_frontier,
    plot_history,
    plot_importances,
    plot_stability,
)
from deepsc_tune.results.report._summary import IndexRow, ReportData, Summary

PLOT_CONFIG = {"displaylogo": False, "responsive": True}


@functools.cache
def _template(name: str) -> string.Template:
    """``deepsc_tune/results/report/templates/NAME``; a fragment's final newline is the file's, not the page's."""
    text = (resources.files("deepsc_tune.results.report") / "templates" / name).read_text(encoding="utf-8")
    return string.Template(text if name == "page.html" else text.removesuffix("\n"))


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


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.4f}" + (f" ± {std:.4f}" if std is not None else "")


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
            *(("against " + line.split(" ", 1)[0].rstrip(":"), _e(line)) for line in s.references),
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
        f"<th>std over last {LAST_EPOCHS} epochs</th><th>seeds</th><th>mean ± std across seeds</th></tr>"
    )
    body = "".join(
        f"<tr><td class=n>#{r.number}</td><td>{_e(r.label)}</td><td class=n>{_f(r.value)}</td>"
        f"<td class=n>{_f(r.last_epochs_std)}</td><td class=n>{len(r.runs)}</td>"
        f"<td class=n>{_pm(r.seed_mean, r.seed_std) if len(r.runs) > 1 else '-'}</td></tr>"
        for r in rows
    )
    hint = ""
    if rows and all(len(r.runs) == 1 for r in rows):
        hint = (
            f"<p class=muted>No repeats yet: <code>deepsc-tune repeat {_e(name)} --top 3 --seeds 3</code> "
            "re-runs the best configurations with other seeds.</p>"
        )
    note = "<p class=muted>Validation only: candidates are compared on validation; test metrics are in the summary, for the chosen configuration.</p>"
    return f"<table>{head}{body}</table>{note}{hint}"


def _html_page(title: str, body: str) -> str:
    return _template("page.html").substitute(title=_e(title), body=body)


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
    head = {
        "study_name": _e(s.study_name),
        "about": " &middot; ".join(_e(a) for a in about if a),
        "notes": "".join(f"<div class=note>{_e(n)}</div>" for n in data.notes),
        "summary": _summary_html(s),
    }
    title = f"{s.study_name}: deepsc-tune report"
    if s.finished == 0:
        curves = ""
        if data.curves:  # trials still running: their epochs so far
            curves = "<h2>Learning curves so far</h2>" + _Page().figure(
                plot_curves(data.curves, metric=s.metric), "fig-curves"
            )
        return _html_page(title, _template("report_unfinished.html").substitute(head, curves=curves))
    page = _Page()  # figures drawn in page order: plotly.js is inlined with the first
    sections = {
        "frontier": page.figure(plot_frontier(data.frontier, metric=s.metric), "fig-frontier"),
        "curves": page.figure(plot_curves(data.curves, metric=s.metric), "fig-curves"),
        "history": page.figure(plot_history(data.history, metric=s.metric), "fig-history"),
    }
    if data.importances.values:
        why = "".join(f"<p class=muted>{_e(line)}</p>" for line in data.importances.explanations)
        sections["importances"] = (
            f"<div>{page.figure(plot_importances(data.importances), 'fig-importances')}{why}</div>"
        )
    else:
        sections["importances"] = f"<div class=note>{_e(data.importances.note)}</div>"
    if data.contour.note is None:
        sections["contour"] = page.figure(
            plot_contour(data.contour, trials=data.trials, metric=s.metric), "fig-contour"
        )
    else:
        sections["contour"] = f"<div class=note>{_e(data.contour.note)}</div>"
    if data.stability:
        sections["stability"] = (
            page.figure(plot_stability(data.stability, metric=s.metric), "fig-stability")
            + "\n"
            + _stability_html(data.stability, name=s.command_args)
        )
    else:
        sections["stability"] = "<div class=note>no complete trial yet</div>"
    body = _template("report.html").substitute(head, **sections)
    return _html_page(title, body)


def _where(row: IndexRow) -> str:
    folder = row.report.rsplit("/", 1)[0]
    return "" if folder == row.name else f" <span class=muted>({_e(folder)}/)</span>"


def render_index(rows: Sequence[IndexRow], *, errors: Sequence[tuple[str, str]] = ()) -> str:
    """``index.html``: the table DeepSC's guide keeps by hand, one row per study."""
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
    text = _template("index.html").substitute(
        created=_e(datetime.datetime.now().strftime("%Y-%m-%d %H:%M")),
        empty="" if rows or errors else "<div class=note>no study found: run <code>deepsc-tune run NAME</code></div>",
        problems="".join(f"<div class=note>{_e(name)}: {_e(msg)}</div>" for name, msg in errors),
        rows=body,
    )
    return _html_page("deepsc-tune studies", text)


__all__ = ["PLOT_CONFIG", "render_index", "render_report"]
