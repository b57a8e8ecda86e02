"""Read-only commands on a study's results: ``best``, ``status`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deepsc_tune.cli._common import (
    NameArg,
    ResultsDirOpt,
    StorageOpt,
    StudyNameOpt,
    _echo,
    _load_study,
    _os_error,
    _quiet_libraries,
    user_errors,
)
from deepsc_tune.errors import ConfigError, DeepscTuneError


def _print_best(study, backend: str, *, fmt: str, folder=None) -> None:
    """The chosen configuration (``folder``: the study's :class:`~deepsc_tune.study._folder.StudyFolder`,
    for a DeepSC study's search space and trial records)."""
    from deepsc_tune.results import best_notes, format_best
    from deepsc_tune.study import best_search_trial, select

    try:
        best_search_trial(study)  # the clear error when nothing has completed
    except DeepscTuneError as e:
        _echo(str(e))
        return
    selection = select(study.get_trials(deepcopy=False))  # by the mean over seeds
    trial = selection.best.trial
    if fmt == "hydra":
        # Only the command on stdout, so that `$(deepsc-tune best NAME --format hydra)` runs it.
        for line in best_notes(study, trial, backend=backend, selection=selection, folder=folder):
            typer.echo(f"# {line}", err=True)
    _echo(format_best(study, trial, fmt=fmt, backend=backend, selection=selection, folder=folder))


def best(
    name: NameArg,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="yaml (settings block, with notes as comments), hydra (one shell command that "
            "re-runs the trial in DeepSC; notes on stderr) or json.",
        ),
    ] = "yaml",
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
) -> None:
    """Print the best configuration, ready to paste into DeepSC."""
    from deepsc_tune.results import FORMATS

    with user_errors():
        if fmt not in FORMATS:
            raise ConfigError(f"--format: unknown {fmt!r}; expected one of {', '.join(FORMATS)}")
        study, backend, folder = _load_study(name, results_dir, storage, study_name)
        from deepsc_tune.study import best_search_trial

        best_search_trial(study)  # no completed trial: the error, on stderr, exit 1
        _print_best(study, backend, fmt=fmt, folder=folder)


def status(
    name: NameArg,
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document (for scripts and dashboards) instead of the table.")
    ] = False,
    all_test_metrics: Annotated[
        bool,
        typer.Option(
            "--all-test-metrics",
            help="Show every trial's test accuracy. Off by default: test metrics are shown for the chosen "
            "configuration only, so that nobody chooses on the test set.",
        ),
    ] = False,
) -> None:
    """Print a table of the study's trials (state, settings, validation metrics, reason for failures).

    Test metrics appear for the chosen configuration only (selected on validation), or for every
    trial with --all-test-metrics."""
    from deepsc_tune.cli._console_table import Column, print_table
    from deepsc_tune.cli._progress import format_params
    from deepsc_tune.data import chance_note, chance_trials
    from deepsc_tune.study import (
        ENQUEUED,
        REPEAT_OF,
        RETRY_OF,
        failure_reason,
        last_reported,
        state_counts,
        study_metric,
        trial_result,
    )

    with user_errors():
        study, backend, folder = _load_study(name, results_dir, storage, study_name)
        trials = study.get_trials(deepcopy=False)
        metric = study_metric(study.user_attrs)
        if as_json:
            _echo(_status_json(study, trials, metric, folder))
            return
        at_chance = set(chance_trials(study, trials))
        rows = []
        for t in trials:
            u = t.user_attrs
            shown = t.value if t.value is not None else last_reported(t)
            value = f"{shown:.4f}" if shown is not None else "-"
            accuracy = trial_result(t).test_accuracy
            test = f"{accuracy:.4f}" if accuracy is not None else "-"
            tags = [f"{k}={u[k]}" for k in (ENQUEUED, REPEAT_OF, RETRY_OF) if k in u]
            if t.number in at_chance:
                tags.append("chance level")
            extra = f"  [{', '.join(tags)}]" if tags else ""
            last = f"{format_params(t.params)}{extra}"
            reason = failure_reason(t)
            if reason:
                last += f"\nreason: {reason.splitlines()[0][:200]}"
            row = [str(t.number), t.state.name, value, str(len(t.intermediate_values)), test, last]
            rows.append(row if all_test_metrics else row[:4] + row[5:])
        columns = [
            Column("#", "right", min_width=4),
            Column("state", min_width=8),
            Column(metric, "right"),
            Column("epochs", "right"),
            Column("test acc", "right"),
            Column("settings / reason"),
        ]
        print_table(columns if all_test_metrics else columns[:4] + columns[5:], rows)
        by_state = state_counts(trials)
        counts = {t.state.name: by_state[t.state] for t in trials}
        _echo(", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "no trials")
        note = chance_note(study, trials)
        if note:
            _echo(f"note: {note}")
        _echo_ranking(trials, metric, test_metrics=all_test_metrics)
        _echo_chosen_test(trials)
        _echo_references(study, trials, metric)
        _echo_checkpoint_disk(trials, backend, folder)


def _echo_chosen_test(trials) -> None:
    """`status`: the test metrics of the chosen configuration, the one place they are shown."""
    from deepsc_tune.study import format_reported, select

    best = select(trials).best
    if best is None:
        return
    acc, f1 = format_reported(best.test_accuracy), format_reported(best.test_macro_f1)
    if acc is None and f1 is None:
        return
    _echo(
        f"chosen: trial {best.number} (on validation); test accuracy {acc or '-'}, test macro-F1 {f1 or '-'}"
        " (reported only, never used to choose)"
    )


def _echo_references(study, trials, metric: str) -> None:
    """`status`: the chosen configuration against chance and the logistic-regression baseline."""
    from deepsc_tune.results import reference_notes
    from deepsc_tune.study import select

    selection = select(trials)
    if selection.best is not None:
        for line in reference_notes(study, selection, selection.best.number, metric=metric):
            _echo(line)


def _echo_checkpoint_disk(trials, backend: str, folder) -> None:
    """`status` of a DeepSC study: the disk its trials' checkpoints take (``folder``: its
    :class:`~deepsc_tune.study._folder.StudyFolder`)."""
    from deepsc_tune.backends import get_backend

    if not get_backend(backend).runs_program:
        return
    from deepsc_tune.backends.command.deepsc import disk_usage, format_bytes

    files, size = disk_usage(folder.trial(t.number) for t in trials)
    _echo(f"DeepSC checkpoints: {files} files, {format_bytes(size)} on disk (finetune.keep_checkpoints)")


def _echo_ranking(trials, metric: str, *, top: int = 5, test_metrics: bool = False) -> None:
    """`status`: the best configurations by their mean over seeds, once any has repeats."""
    from deepsc_tune.cli._console_table import Column, print_table
    from deepsc_tune.cli._progress import format_params
    from deepsc_tune.study import format_mean_sd, format_reported, select

    selection = select(trials)
    if not any(c.confirmed for c in selection.ranking):
        return
    _echo(f"\nranking by mean {metric} over seeds (search trial + repeats):")
    rows = [
        [str(c.number), format_mean_sd(c)]
        + ([f"test acc {format_reported(c.test_accuracy) or '-'}"] if test_metrics else [])
        + [format_params(c.params)]
        for c in selection.ranking[:top]
    ]
    columns = [Column("#", "right", min_width=4), Column("mean")]
    columns += [Column("test")] if test_metrics else []
    print_table(columns + [Column("settings")], rows, header=False)
    if selection.leader_test is not None:
        _echo(f"trial {selection.best.number}: {selection.leader_test.reason}")


def _status_json(study, trials, metric: str, folder) -> str:
    """``status --json``: the study, its counts and every trial, as one JSON document (the
    device each trial trained on from its ``trial.json`` in ``folder``, where there)."""
    import json

    from deepsc_tune.data import BASELINE_ATTR, CHANCE_ATTR
    from deepsc_tune.study import (
        ENQUEUED,
        N_TRIALS,
        REPEAT_OF,
        RETRY_OF,
        failure_reason,
        seed_of,
        state_counts,
        study_fixed,
        trial_device,
        trial_result,
    )

    keys = (ENQUEUED, REPEAT_OF, RETRY_OF)
    fixed = study_fixed(study, folder)
    rows = []
    for t in trials:
        u = t.user_attrs
        r = trial_result(t)
        result = {
            "test_accuracy": r.test_accuracy,
            "test_macro_f1": r.test_macro_f1,
            "best_epoch": r.best_epoch,
            "epochs_run": r.epochs_run if t.state.is_finished() else None,
            "duration_s": r.duration_s,
            "seed": seed_of(t, fixed),
        }
        device = trial_device(t, folder)
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                **{k: v for k, v in result.items() if v is not None},
                **{k: u[k] for k in keys if k in u},
                **({"device": device} if device is not None else {}),
                "fail_reason": failure_reason(t),
                "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    by_state = state_counts(trials)
    counts = {t.state.name: by_state[t.state] for t in trials}  # in the order states first occur
    doc = {
        "study": study.study_name,
        "metric": metric,
        "direction": "maximize",
        "n_trials_target": study.user_attrs.get(N_TRIALS),
        "counts": counts,
        "chance": study.user_attrs.get(CHANCE_ATTR),
        "baseline": study.user_attrs.get(BASELINE_ATTR),
        "trials": rows,
    }
    return json.dumps(doc, default=str)


ReportNameArg = Annotated[
    Optional[str],
    typer.Argument(
        help="Study to report on (its search-space name). Without it: every study under "
        "RESULTS_DIR and RESULTS_DIR/index.html.",
        show_default=False,
    ),
]


def report(
    name: ReportNameArg = None,
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    top: Annotated[int, typer.Option("--top", help="Configurations in the stability section.")] = 5,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Folder for the report files (e.g. when the study is on read-only media). Default: RESULTS_DIR/STUDY.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the HTML report of NAME: RESULTS_DIR/STUDY/report.html, trials.csv and best.yaml.

    The page is self-contained (opens offline): the learning-rate frontier per scheduler type,
    learning curves, optimisation history, parameter importances, the summary with DeepSC's
    override line, and stability over the last epochs and across seeds (`deepsc-tune repeat`).
    Read only: safe while a search is still running. Without NAME, writes the report of every
    study under RESULTS_DIR and an index.html linking them.
    """
    from deepsc_tune.results.report import write_index, write_report
    from deepsc_tune.study import find_databases

    _quiet_libraries()
    with user_errors():
        if name is None:
            if storage is not None or study_name is not None or out is not None:
                raise ConfigError(
                    "--storage / --study-name / --out need a NAME (the index scans RESULTS_DIR/*/study.db)"
                )
            if not find_databases(results_dir):
                raise DeepscTuneError(
                    f"no studies under {results_dir} (no {results_dir}/STUDY/study.db); start one with "
                    "`deepsc-tune run pbmc68k` (the demo, no download) or give --results-dir"
                )
            index = write_index(results_dir, top=top)
            for note in index.notes:
                typer.secho(f"note: {note}", fg=typer.colors.YELLOW, err=True)
            for files in index.reports:
                _echo(f"report: {files.html}" + (f"  (note: {files.notes[0]})" if files.notes else ""))
            for where, why in index.errors:
                typer.secho(f"skipped {where}: {why}", fg=typer.colors.YELLOW, err=True)
            _echo(f"index: {index.html} ({len(index.rows)} studies)")
            return
        study, backend, folder = _load_study(name, results_dir, storage, study_name)
        try:
            files = write_report(study, folder=out or folder.path, backend=backend, top=top, record_dir=folder)
        except OSError as e:
            raise DeepscTuneError(f"{_os_error(e)}; give --out FOLDER to write the report elsewhere") from None
        _echo(f"report: {files.html}")
        _echo(f"trials: {files.csv}" + (f"   best: {files.best_yaml}" if files.best_yaml else ""))
        for note in files.notes:
            _echo(f"note: {note}")
