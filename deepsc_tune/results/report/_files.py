"""What users open after a search: ``report.html``, ``trials.csv``, ``best.yaml`` and an index.

The entry point of ``deepsc-tune report``. Read only: a report reads the study once (one
``get_trials`` call, no transaction held), so it can be made while workers are still writing
trials, and it never changes the study. The report is made in layers, as Optuna's own plots:

- :mod:`deepsc_tune.results.report._data`: the data of every plot (NamedTuples, no plotly);
- :mod:`deepsc_tune.results.report._summary`: the summary table, the index rows and :class:`ReportData`,
  everything a report shows from one read of the study (:func:`build_report_data`);
- :mod:`deepsc_tune.results.report._figures`: the plotly figures drawn from that data;
- :mod:`deepsc_tune.results.report._page`: the HTML pages, from the templates in ``deepsc_tune/templates/``;
- this module: the files written (``report.html``, ``trials.csv``, ``best.yaml``, ``index.html``).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.results.report._data import TOP_CONFIGS, epochs_set
from deepsc_tune.results.report._page import render_index, render_report
from deepsc_tune.results.report._summary import IndexRow, ReportData, build_report_data, index_row
from deepsc_tune.study import (
    BEST_YAML,
    DB_FILE,
    ENQUEUED,
    INDEX_HTML,
    REPEAT_OF,
    REPEAT_SEED,
    REPORT_HTML,
    RETRY_OF,
    TRIALS_CSV,
    StudyFolder,
    failure_reason,
    find_databases,
    last_epoch,
    load_existing_study,
    metric_value,
    seed_of,
    study_backend,
    trial_result,
)
from deepsc_tune.utils import atomic_path, write_text

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


def trial_rows(
    trials: Sequence[FrozenTrial],
    fixed: Mapping[str, Any] | None = None,
    *,
    folder: StudyFolder | None = None,
    metric: str = "val_accuracy",
) -> list[dict[str, Any]]:
    """One flat dict per trial for ``trials.csv``: number, state, each parameter, metrics, tags
    (``fixed``: the search space's fixed settings, for each trial's epochs; ``folder``: the
    study's folder, whose ``trial.json`` files have each trial's last epoch; ``metric``: the
    study's, the one last epoch value known without them).

    ``best_val_*`` are the best epoch's metrics, ``val_*`` the last epoch's."""
    names = sorted({name for t in trials for name in t.params})
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        u = t.user_attrs
        result = trial_result(t)
        last = last_epoch(t, folder, metric=metric)
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        row.update({name: t.params.get(name) for name in names})
        row.update(
            {
                "value": metric_value(t),
                "best_val_accuracy": result.val_accuracy,
                "best_val_macro_f1": result.val_macro_f1,
                "val_accuracy": last.get("val_accuracy"),
                "val_macro_f1": last.get("val_macro_f1"),
                "best_epoch": result.best_epoch,
                "test_accuracy": result.test_accuracy,
                "test_macro_f1": result.test_macro_f1,
                "epochs_run": result.epochs_run if t.state != TrialState.WAITING else None,
                "epochs_set": epochs_set(t, fixed=fixed),
                "duration_s": result.duration_s,
                "seed": seed_of(t, fixed),
                "fail_reason": (failure_reason(t) or "").strip() or None,
                "enqueued": bool(u.get(ENQUEUED)) or None,
                "repeat_of": u.get(REPEAT_OF),
                "repeat_seed": u.get(REPEAT_SEED),
                "retry_of": u.get(RETRY_OF),
                "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                "datetime_complete": (
                    t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None
                ),
            }
        )
        rows.append(row)
    return rows


class ReportFiles(NamedTuple):
    """What :func:`write_report` wrote, and what the page could not show yet."""

    html: Path
    csv: Path
    best_yaml: Path | None
    notes: list[str]
    data: ReportData


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file, so a browser or a copy never sees half a page."""
    write_text(path, text)


def write_trials_csv(
    trials: Sequence[FrozenTrial],
    path: Path,
    fixed: Mapping[str, Any] | None = None,
    *,
    folder: StudyFolder | None = None,
    metric: str = "val_accuracy",
) -> Path:
    """``trials.csv``: one row per trial (see :data:`CSV_COLUMNS`; the rest as in :func:`trial_rows`)."""
    rows = trial_rows(trials, fixed, folder=folder, metric=metric)
    params = sorted({name for t in trials for name in t.params})
    columns = ["number", "state", *params, *CSV_COLUMNS]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def write_report(
    study: optuna.Study,
    *,
    folder: Path,
    backend: str = "builtin",
    top: int = TOP_CONFIGS,
    record_dir: StudyFolder | Path | None = None,
) -> ReportFiles:
    """Write ``report.html``, ``trials.csv`` and (once a trial completed) ``best.yaml`` to ``folder``
    (``record_dir``: the study's folder, :class:`StudyFolder`, default ``folder``)."""
    data = build_report_data(study, backend=backend, top=top, record_dir=record_dir or folder)
    return write_report_files(data, folder=folder)


def write_report_files(data: ReportData, *, folder: Path) -> ReportFiles:
    """Write the files of :func:`write_report` from data already computed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    html_path = folder / REPORT_HTML
    page = render_report(data)
    from deepsc_tune.results._lr_find import report_section

    if section := report_section(folder):  # `deepsc-tune lr-find NAME` was run: link its plot
        head, end, tail = page.rpartition("</body>")
        page = head + section + end + tail
    _write_atomic(html_path, page)
    csv_path = write_trials_csv(
        data.trials, folder / TRIALS_CSV, data.fixed, folder=StudyFolder.at(folder), metric=data.summary.metric
    )
    best_path: Path | None = folder / BEST_YAML
    if data.summary.yaml_block:
        _write_atomic(best_path, data.summary.yaml_block + "\n")
    else:
        best_path.unlink(missing_ok=True)  # a stale file would name a configuration of another study
        best_path = None
    return ReportFiles(html_path, csv_path, best_path, data.notes, data)


class IndexFiles(NamedTuple):
    """What :func:`write_index` wrote."""

    html: Path
    rows: list[IndexRow]
    reports: list[ReportFiles]
    errors: list[tuple[str, str]]  # (study, reason) for studies that could not be read
    notes: tuple[str, ...] = ()  # one line per study found in a folder from before (study/_folder.py)


def write_index(results_dir: Path, *, top: int = TOP_CONFIGS) -> IndexFiles:
    """Write the report of every study under ``RESULTS_DIR/*/study.db`` and ``RESULTS_DIR/index.html``.

    Each database is opened read only (no heartbeats), like ``deepsc-tune report NAME``. The
    report of study ``S`` goes to its folder, ``RESULTS_DIR/S/`` (:class:`StudyFolder`), also for a
    study kept as before in the database of another folder ``F`` (said in ``notes``), unless its
    own folder holds another study of that name: then it stays beside its database, in ``F/``
    (the only study there) or ``F/S/``, so equal names never overwrite each other. A database
    that cannot be read is listed with the reason instead of stopping the others.
    """
    from deepsc_tune.study import open_storage

    results_dir = Path(results_dir)
    rows, reports, errors, notes = [], [], [], []
    for db in find_databases(results_dir):
        try:
            storage = open_storage(f"sqlite:///{db}", heartbeat=False)
            names = optuna.get_all_study_names(storage)
        except Exception as e:  # a corrupt or foreign file: say so, go on with the others
            errors.append((db.parent.name, f"cannot read {db}: {str(e).splitlines()[0] if str(e) else e!r}"))
            continue
        for name in sorted(names, key=lambda n: (n != db.parent.name, n)):
            folder = StudyFolder(results_dir, name, old=None if name == db.parent.name else db.parent)
            out = folder.path
            if folder.old is not None and (folder.path / DB_FILE).is_file():
                # its own folder holds another study of that name: its report stays beside its database
                out = db.parent if len(names) == 1 else db.parent / name
            elif folder.note:
                notes.append(folder.note)
            study = load_existing_study(storage=storage, study_name=name)
            files = write_report(study, folder=out, backend=study_backend(study.user_attrs), top=top, record_dir=folder)
            reports.append(files)
            report = files.html.relative_to(results_dir).as_posix()
            rows.append(index_row(files.data, report=report))
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / INDEX_HTML
    _write_atomic(path, render_index(rows, errors=errors))
    return IndexFiles(path, rows, reports, errors, tuple(notes))


__all__ = [
    "CSV_COLUMNS",
    "IndexFiles",
    "ReportData",
    "ReportFiles",
    "build_report_data",
    "trial_rows",
    "write_index",
    "write_report",
    "write_report_files",
    "write_trials_csv",
]
