"""report.py: the files written next to the page (``trials.csv``, ``best.yaml``), the report of
empty, one-trial and running studies, ``deepsc-tune report`` and the index of studies.

The data each figure is drawn from is tested in ``test_report_data.py``, the summary in
``test_report_summary.py``, the figures in ``test_report_figures.py``, the page's tables in
``test_report_page.py``; ``test_report_browser.py`` checks that the page draws in a real browser.
"""

from __future__ import annotations

import csv
import statistics
import threading

import optuna
from optuna.trial import TrialState
from report_studies import REAL_EPOCHS, add, const, cos, run_cli

from deepsc_tune.results._export import format_best
from deepsc_tune.results.report._data import metric_value
from deepsc_tune.results.report._files import build_report_data, trial_rows, write_index, write_report
from deepsc_tune.study._selection import best_search_trial
from deepsc_tune.study._storage import open_storage
from deepsc_tune.study._trial_record import search_trials, trial_result

optuna.logging.set_verbosity(optuna.logging.ERROR)


# ----------------------------------------------------------------------------- summary and files


def test_write_report_files(real_copy):
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{real_copy / 'pbmc68k' / 'study.db'}")
    files = write_report(study, folder=real_copy / "pbmc68k")
    # The notes: too few trials for importances (10 trials, some pruned), and trials that completed
    # at chance level (4 epochs at 1e-4 can stay there).
    chance = study.user_attrs["val_chance"]["val_accuracy"]
    low = [t.number for t in study.trials if t.state == TrialState.COMPLETE and t.value <= chance + 0.02]
    assert files.notes[0].startswith("parameter importances need 10 or more complete trials")
    assert len(files.notes) == (2 if low else 1), files.notes
    assert all(f"#{n}" in files.notes[-1] and "chance level" in files.notes[-1] for n in low)
    assert files.html == real_copy / "pbmc68k" / "report.html"
    best = best_search_trial(study)
    assert files.best_yaml.read_text() == format_best(study, best, fmt="yaml") + "\n"
    with files.csv.open() as f:
        rows = list(csv.DictReader(f))
    trials = study.get_trials()
    assert [int(r["number"]) for r in rows] == [t.number for t in trials]
    for row, t in zip(rows, trials):
        assert row["state"] == t.state.name
        assert float(row["learning_rate"]) == t.params["learning_rate"]
        assert row["warmup_ratio"] == ("" if "warmup_ratio" not in t.params else str(t.params["warmup_ratio"]))
        assert float(row["value"]) == metric_value(t)
        assert int(row["epochs_run"]) == len(t.intermediate_values) and int(row["epochs_set"]) == REAL_EPOCHS
        assert float(row["duration_s"]) == trial_result(t).duration_s > 0
    assert rows[0]["enqueued"] == "True" and rows[0]["test_accuracy"]
    # one self-contained page: plotly.js inlined once, nothing loaded from elsewhere
    page = files.html.read_text()
    assert page.count("* plotly.js v") == 1 and "<script src=" not in page


def test_trial_rows_tags(synthetic):
    rows = {r["number"]: r for r in trial_rows(synthetic.trials)}
    assert rows[9]["repeat_of"] == 5 and rows[9]["repeat_seed"] == 1
    assert rows[6]["fail_reason"] == "training diverged: loss is NaN"
    assert rows[2]["value"] == 0.45 and rows[2]["state"] == "PRUNED"
    assert rows[1]["warmup_ratio"] == 0.03 and rows[0]["warmup_ratio"] is None


def test_empty_study_gets_a_page_and_a_note(tmp_path):
    folder = tmp_path / "results" / "empty"
    folder.mkdir(parents=True)
    optuna.create_study(study_name="empty", storage=f"sqlite:///{folder / 'study.db'}")
    result = run_cli("report", "empty", "--results-dir", str(tmp_path / "results"))
    assert result.exit_code == 0, result.output
    assert "note: study 'empty' has no finished trial yet (0 trials" in result.output
    assert (folder / "report.html").is_file() and not (folder / "best.yaml").exists()
    assert (folder / "trials.csv").read_text().startswith("number,state,value,")
    data = build_report_data(optuna.load_study(study_name="empty", storage=f"sqlite:///{folder / 'study.db'}"))
    assert data.frontier.points == {} and data.curves == [] and data.stability == []


def test_one_trial_study(tmp_path):
    study = optuna.create_study(direction="maximize", study_name="one")
    add(study, TrialState.COMPLETE, const(1e-4), [0.4, 0.6], epochs=2, enqueued=True)
    files = write_report(study, folder=tmp_path / "one")
    assert files.notes == [
        "parameter importances need 10 or more complete trials in which at least 2 searched parameters vary "
        "(0 so far): not drawn"
    ]
    assert files.best_yaml is not None and "learning_rate: 0.0001" in files.best_yaml.read_text()
    data = files.data
    assert [p.label for p in data.frontier.points["constant"]] == ["guide: constant 1e-4"]
    assert data.stability[0].last_values == (0.4, 0.6)
    assert data.contour.note.startswith(
        "the learning_rate x warmup_ratio contour needs 8 or more complete cosine trials (0 so far)"
    )


def test_report_while_a_search_is_running(tmp_path):
    """A RUNNING trial shows as a curve; the report reads while another connection writes."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    writer = optuna.create_study(study_name="live", storage=open_storage(url, heartbeat=False), direction="maximize")
    running = writer.ask()
    running.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    running.report(0.4, 1)
    running.report(0.5, 2)
    reader = optuna.load_study(study_name="live", storage=open_storage(url, heartbeat=False))
    data = build_report_data(reader)
    assert [(c.number, c.state, c.values) for c in data.curves] == [(0, "RUNNING", (0.4, 0.5))]
    assert "no finished trial yet (1 trials: 1 running" in data.notes[0]

    errors: list[BaseException] = []

    def write_trials():
        try:
            for _ in range(20):
                t = writer.ask()
                lr = t.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
                for epoch in (1, 2):
                    t.report(0.1 * epoch + lr, epoch)
                writer.tell(t, 0.2 + lr)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=write_trials)
    thread.start()
    for _ in range(3):
        write_report(reader, folder=tmp_path / "live")
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    assert len(search_trials(writer, states=(TrialState.COMPLETE,))) == 20


# ----------------------------------------------------------------------------- CLI and index


def test_cli_report_and_index(real_copy):
    result = run_cli("report", "pbmc68k", "--results-dir", str(real_copy))
    assert result.exit_code == 0, result.output
    assert f"report: {real_copy / 'pbmc68k' / 'report.html'}" in result.output
    # a second study in the same results folder
    other = real_copy / "tiny"
    other.mkdir()
    tiny = optuna.create_study(study_name="tiny", storage=f"sqlite:///{other / 'study.db'}", direction="maximize")
    tiny.set_user_attr("config", {"data": {"train": "/data/tiny.h5ad"}})
    for trial in synthetic_trials():
        tiny.add_trial(trial)
    index = write_index(real_copy)
    assert index.html == real_copy / "index.html"
    assert [r.name for r in index.rows] == ["pbmc68k", "tiny"]
    real, small = index.rows
    assert real.report == "pbmc68k/report.html" and real.dataset == "pbmc68k_reduced"
    assert small.dataset == "tiny" and small.scheduler == "constant" and small.learning_rate == 3e-3
    assert small.warmup_ratio is None and small.val_accuracy is None and small.trials == 2
    assert small.stability == f"± {statistics.pstdev([0.8, 0.9, 0.85]):.4f} last 3 epochs"
    assert (other / "report.html").is_file()
    result = run_cli("report", "--results-dir", str(real_copy))
    assert result.exit_code == 0 and "(2 studies)" in result.output


def synthetic_trials():
    study = optuna.create_study(direction="maximize")
    add(study, TrialState.COMPLETE, const(3e-3), [0.6, 0.8, 0.9, 0.85], epochs=4)
    add(study, TrialState.PRUNED, cos(1e-3), [0.3], epochs=4)
    return study.trials


def test_index_stability_prefers_seeds(tmp_path, synthetic):
    folder = tmp_path / "results" / "synthetic"
    folder.mkdir(parents=True)
    stored = optuna.create_study(
        study_name="synthetic", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize"
    )
    for t in synthetic.trials:
        if t.number == 3:  # demote the best constant trial so that #5 (repeated) is best
            t = optuna.trial.create_trial(
                state=TrialState.COMPLETE,
                value=0.5,
                params=t.params,
                distributions=t.distributions,
                intermediate_values={1: 0.5},
            )
        stored.add_trial(t)
    (row,) = write_index(tmp_path / "results").rows
    assert row.scheduler == "cosine" and row.learning_rate == 5e-3 and row.warmup_ratio == 0.02
    assert row.stability == "± 0.0400 over 3 seeds"
    assert row.test_accuracy == 0.83 and row.epochs == 4


def test_cli_report_missing_study(tmp_path):
    result = run_cli("report", "nope", "--results-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "no study found" in result.output


def test_index_keeps_reports_of_same_named_studies_apart(tmp_path):
    """Each study reports in its own folder (RESULTS/STUDY); one whose folder holds another study
    of its name stays beside its database, so equal names never overwrite each other."""
    results = tmp_path / "results"
    for folder, names in (("a", ["pbmc68k"]), ("pbmc68k", ["pbmc68k", "pbmc68k-2"])):
        (results / folder).mkdir(parents=True)
        for name in names:
            study = optuna.create_study(
                study_name=name, storage=f"sqlite:///{results / folder / 'study.db'}", direction="maximize"
            )
            for trial in synthetic_trials():
                study.add_trial(trial)
    (results / "broken").mkdir()
    (results / "broken" / "study.db").write_text("not a database")
    index = write_index(results)
    assert [(r.name, r.report) for r in index.rows] == [
        ("pbmc68k", "a/report.html"),
        ("pbmc68k", "pbmc68k/report.html"),
        ("pbmc68k-2", "pbmc68k-2/report.html"),  # kept as before in pbmc68k/study.db: said once
    ]
    assert all((results / r.report).is_file() for r in index.rows)
    assert len(index.notes) == 1 and "study 'pbmc68k-2' found in" in index.notes[0]
    assert not (results / "pbmc68k" / "pbmc68k-2").exists()
    assert [name for name, _ in index.errors] == ["broken"]
