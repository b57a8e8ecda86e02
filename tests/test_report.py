"""Report data on a real small study and on synthetic studies with known numbers.

The page itself is drawing; these tests check the data each figure is drawn from, and the
files written next to it (``trials.csv``, ``best.yaml``). ``test_report_browser.py`` checks that
the page draws in a real browser.
"""

from __future__ import annotations

import contextlib
import csv
import sqlite3
import statistics
import threading
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.export import format_best
from deepsc_tune.report import (
    FrontierPoint,
    build_report_data,
    config_label,
    contour_data,
    envelope,
    epoch_budget,
    format_number,
    frontier_data,
    learning_curves,
    metric_value,
    optimization_history,
    param_importances,
    plot_frontier,
    stability_data,
    summary_data,
    trial_rows,
    write_index,
    write_report,
)
from deepsc_tune.storage import open_storage
from deepsc_tune.trial_record import best_search_trial, search_trials

optuna.logging.set_verbosity(optuna.logging.ERROR)

#: A real search small enough for a test: 8 trials of 4 epochs on scanpy's bundled PBMC data.
REAL_OVERRIDES = ["study.n_trials=8", "finetune.epoch=4", "finetune.hidden=[32]"]
REAL_EPOCHS = 4


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="session")
def real_results(tmp_path_factory) -> Path:
    """``deepsc-tune run pbmc68k`` (8 trials, 4 epochs), run once for the whole session."""
    results = tmp_path_factory.mktemp("real") / "results"
    result = run_cli("run", "pbmc68k", "--results-dir", str(results), "--threads", "1", *REAL_OVERRIDES)
    assert result.exit_code == 0, result.output
    return results


@pytest.fixture
def real_study(real_results):
    """The real study, opened read only as `deepsc-tune report` opens it."""
    storage = open_storage(f"sqlite:///{real_results / 'pbmc68k' / 'study.db'}", heartbeat=False)
    return optuna.load_study(study_name="pbmc68k", storage=storage)


@pytest.fixture
def real_copy(real_results, tmp_path) -> Path:
    """A results folder holding a copy of the real study (for tests that write files)."""
    folder = tmp_path / "results" / "pbmc68k"
    folder.mkdir(parents=True)
    copy_database(real_results / "pbmc68k" / "study.db", folder / "study.db")
    return tmp_path / "results"


def copy_database(source: Path, target: Path) -> None:
    """Copy a SQLite study with SQLite's backup (a WAL database's recent pages are in -wal)."""
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


# ----------------------------------------------------------------------------- synthetic studies

DISTRIBUTIONS = {
    "lr_scheduler_type": CategoricalDistribution(["constant", "cosine"]),
    "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
    "warmup_ratio": FloatDistribution(0.0, 0.2),
}


def add(study, state, params, curve=(), *, value=None, epochs=None, **user_attrs):
    """Add a trial: ``curve`` are the per-epoch values, ``epochs`` its ``epoch`` setting."""
    if state == TrialState.COMPLETE and value is None:
        value = max(curve)
    if epochs is not None:
        user_attrs["settings"] = {**params, "epoch": epochs, "seed": user_attrs.get("seed", 0)}
    if curve and state != TrialState.WAITING:
        user_attrs.setdefault("epochs_run", len(curve))
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            intermediate_values={i + 1: v for i, v in enumerate(curve)},
            user_attrs=user_attrs,
        )
    )
    return study.trials[-1]


def const(lr):
    return {"lr_scheduler_type": "constant", "learning_rate": lr}


def cos(lr, warmup=0.05):
    return {"lr_scheduler_type": "cosine", "learning_rate": lr, "warmup_ratio": warmup}


@pytest.fixture
def synthetic():
    """A study with known numbers: 2 schedulers, pruned, failed, enqueued and repeated trials."""
    study = optuna.create_study(direction="maximize", study_name="synthetic")
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    add(study, C, const(1e-4), [0.3, 0.5, 0.6, 0.7], epochs=4, enqueued=True)  # 0
    add(study, C, cos(1e-4, 0.03), [0.2, 0.4, 0.5, 0.55], epochs=4, enqueued=True)  # 1
    add(study, P, const(1e-3), [0.4, 0.45], epochs=4)  # 2: saves 2 epochs
    add(study, C, const(3e-3), [0.6, 0.8, 0.9, 0.85], epochs=4)  # 3: best constant 0.9
    add(study, P, cos(2e-3, 0.1), [0.5], epochs=4)  # 4: saves 3
    add(study, C, cos(5e-3, 0.02), [0.7, 0.8, 0.88, 0.86], epochs=4, seed=0, test_accuracy=0.83, test_macro_f1=0.7)  # 5
    add(study, F, cos(9e-2, 0.1), [0.1, 0.1, 0.1], epochs=4, fail_reason="training diverged: loss is NaN")  # 6
    add(study, C, cos(1e-2, 0.15), [0.6, 0.7, 0.75, 0.8], epochs=4)  # 7
    add(study, P, const(5e-5), [0.3, 0.35, 0.4], epochs=10)  # 8: saves 7
    # repeats of trial 5 with seeds 1 and 2; a third failed
    add(
        study,
        C,
        cos(5e-3, 0.02),
        [0.7, 0.8, 0.84, 0.84],
        epochs=4,
        repeat_of=5,
        repeat_seed=1,
        seed=1,
        test_accuracy=0.81,
    )  # 9
    add(
        study,
        C,
        cos(5e-3, 0.02),
        [0.6, 0.78, 0.8, 0.8],
        epochs=4,
        repeat_of=5,
        repeat_seed=2,
        seed=2,
        test_accuracy=0.80,
    )  # 10
    add(study, F, cos(5e-3, 0.02), [0.5], epochs=4, repeat_of=5, repeat_seed=3, fail_reason="interrupted")  # 11
    return study


# ----------------------------------------------------------------------------- frontier


def test_frontier_points_on_real_study(real_study):
    """Every finished search trial once, under its scheduler, at trial.value or its last epoch."""
    trials = real_study.get_trials()
    frontier = frontier_data(trials)
    finished = search_trials(real_study, states=(TrialState.COMPLETE, TrialState.PRUNED))
    points = {p.number: p for ps in frontier.points.values() for p in ps}
    assert sorted(points) == sorted(t.number for t in finished)
    assert set(frontier.points) == {"constant", "cosine"}
    pruned = [t for t in finished if t.state == TrialState.PRUNED]
    assert pruned, "the real study should prune at least one trial (hyperband, 8 trials)"
    for t in finished:
        p = points[t.number]
        assert p.scheduler == t.params["lr_scheduler_type"]
        assert p.learning_rate == t.params["learning_rate"]
        if t.state == TrialState.COMPLETE:
            assert p.value == t.value and p.state == "COMPLETE"
        else:
            assert p.value == t.intermediate_values[max(t.intermediate_values)] and p.state == "PRUNED"
    for scheduler, ps in frontier.points.items():
        assert all(p.scheduler == scheduler for p in ps)
        assert [p.learning_rate for p in ps] == sorted(p.learning_rate for p in ps)


def test_envelope_is_the_best_value_at_or_below_each_learning_rate(real_study):
    frontier = frontier_data(real_study.get_trials())
    for scheduler, steps in frontier.envelopes.items():
        points = frontier.points[scheduler]
        lrs = [s.learning_rate for s in steps]
        assert lrs == sorted(set(p.learning_rate for p in points))  # one step per distinct LR
        values = [s.value for s in steps]
        assert values == sorted(values)  # never decreases with the learning rate
        for s in steps:
            below = [p for p in points if p.learning_rate <= s.learning_rate]
            assert s.value == max(p.value for p in below)
            assert s.number in {p.number for p in below if p.value == s.value}
        assert steps[-1].value == max(p.value for p in points)


def point(number, lr, value, state="COMPLETE"):
    return FrontierPoint(number, "constant", lr, value, state, None, {})


def test_envelope_exact_steps_ties_and_duplicate_learning_rates():
    points = [
        point(0, 1e-3, 0.5),
        point(1, 1e-4, 0.6),
        point(2, 1e-2, 0.55),
        point(3, 1e-3, 0.7, "PRUNED"),
        point(4, 5e-2, 0.7),
        point(5, 1e-1, 0.2),
    ]
    steps = envelope(points)
    assert [(s.learning_rate, s.value, s.number) for s in steps] == [
        (1e-4, 0.6, 1),
        (1e-3, 0.7, 3),
        (1e-2, 0.7, 3),
        (5e-2, 0.7, 3),
        (1e-1, 0.7, 3),
    ]
    assert envelope([]) == []


def test_guide_configs_are_labelled(real_study, synthetic):
    labels = {p.number: p.label for ps in frontier_data(real_study.get_trials()).points.values() for p in ps}
    enqueued = {t.number for t in real_study.get_trials() if t.user_attrs.get("enqueued")}
    assert enqueued == {0, 1}  # pbmc68k.yaml's two `study.enqueue` entries run first
    assert labels[0] == "guide: constant 1e-4"
    assert labels[1] == "guide: cosine 1e-4 warmup 0.03"
    assert all(label is None for n, label in labels.items() if n not in enqueued)
    synthetic_labels = [p.label for ps in frontier_data(synthetic.trials).points.values() for p in ps if p.label]
    assert sorted(synthetic_labels) == ["guide: constant 1e-4", "guide: cosine 1e-4 warmup 0.03"]


def test_frontier_leaves_out_repeats_failed_and_running(synthetic):
    add(synthetic, TrialState.RUNNING, cos(3e-3), [0.9])
    numbers = {p.number for ps in frontier_data(synthetic.trials).points.values() for p in ps}
    assert numbers == {0, 1, 2, 3, 4, 5, 7, 8}


def test_frontier_marks_confirmed_configurations(synthetic):
    """Trial 5 ran with 3 seeds (itself and 2 COMPLETE repeats; the FAIL one does not count)."""
    points = {p.number: p for ps in frontier_data(synthetic.trials).points.values() for p in ps}
    assert points[5].seeds == 3
    assert all(p.seeds == 1 for n, p in points.items() if n != 5)
    fig = plot_frontier(frontier_data(synthetic.trials))
    ring = [tr for tr in fig.data if tr.name == "confirmed (several seeds)"]
    assert len(ring) == 1 and list(ring[0].customdata[0]) == [5, 3]


@pytest.mark.parametrize(
    "value, text",
    [
        (1e-4, "1e-4"),
        (3.6037e-3, "3.6e-3"),
        (2.26e-5, "2.3e-5"),
        (0.03, "0.03"),
        (0.0135288, "0.0135"),
        (0.1, "0.1"),
        (None, "-"),
        (0.0, "0"),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_config_label():
    assert config_label(const(1e-4)) == "constant 1e-4"
    assert config_label({**cos(1e-4, 0.03), "batch_size": 64}) == "cosine 1e-4 warmup 0.03 batch_size 64"


# ----------------------------------------------------------------------------- curves, history, epochs


def test_learning_curves(real_study, synthetic):
    trials = real_study.get_trials()
    curves = learning_curves(trials)
    assert [c.number for c in curves] == [t.number for t in search_trials(real_study) if t.intermediate_values]
    best = best_search_trial(real_study)
    assert [c.number for c in curves if c.is_best] == [best.number]
    for c, t in zip(curves, search_trials(real_study)):
        assert c.state == t.state.name
        assert c.values == tuple(t.intermediate_values[e] for e in sorted(t.intermediate_values))
        assert c.epochs == tuple(range(1, len(c.values) + 1))
    states = {c.number: c.state for c in learning_curves(synthetic.trials)}
    assert states[6] == "FAIL" and states[2] == "PRUNED" and 9 not in states  # repeats left out


def test_optimization_history(real_study):
    history = optimization_history(real_study.get_trials())
    trials = search_trials(real_study, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    assert [h.number for h in history] == [t.number for t in trials]
    best, spent = None, 0
    for h, t in zip(history, trials):
        spent += len(t.intermediate_values)
        if t.state == TrialState.COMPLETE:
            best = t.value if best is None else max(best, t.value)
        assert h.best_so_far == best and h.cumulative_epochs == spent and h.epochs == len(t.intermediate_values)
        assert h.value == metric_value(t)
    assert history[-1].best_so_far == best_search_trial(real_study).value


def test_history_exact(synthetic):
    history = optimization_history(synthetic.trials)
    assert [h.number for h in history] == [0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert [h.best_so_far for h in history] == [0.7, 0.7, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    assert [h.cumulative_epochs for h in history] == [4, 8, 10, 14, 15, 19, 22, 26, 29]
    assert history[6].value is None  # FAIL


def test_epochs_saved_exact(synthetic):
    budget = epoch_budget(synthetic.trials)
    # pruned: #2 ran 2 of 4, #4 ran 1 of 4, #8 ran 3 of 10
    assert budget.saved == 2 + 3 + 7
    assert budget.pruned_trials == 3
    # every trial, repeats and failures included: 29 search epochs + 4 + 4 + 1 of repeats
    assert budget.trained == 29 + 9
    assert budget.without_pruning == budget.trained + budget.saved


def test_epochs_saved_uses_the_default_when_a_trial_recorded_no_settings():
    study = optuna.create_study(direction="maximize")
    add(study, TrialState.PRUNED, const(1e-3), [0.3])
    assert epoch_budget(study.trials).saved == 0
    assert epoch_budget(study.trials, default_epochs=10).saved == 9


def test_epochs_saved_on_real_study(real_study):
    trials = real_study.get_trials()
    budget = epoch_budget(trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert budget.saved == sum(REAL_EPOCHS - len(t.intermediate_values) for t in pruned) > 0
    assert budget.trained == sum(len(t.intermediate_values) for t in trials)
    assert budget.without_pruning <= REAL_EPOCHS * len(trials)


# ----------------------------------------------------------------------------- stability, importances


def test_stability_exact(synthetic):
    rows = stability_data(synthetic.trials, top=3, last=3)
    assert [r.number for r in rows] == [3, 5, 7]  # by value: 0.9, 0.88, 0.8
    five = rows[1]
    assert five.label == "cosine 5e-3 warmup 0.02"
    assert five.last_values == (0.8, 0.88, 0.86)
    assert five.last_epochs_std == pytest.approx(statistics.pstdev([0.8, 0.88, 0.86]))
    assert [(r.number, r.seed, r.value) for r in five.runs] == [(5, 0, 0.88), (9, 1, 0.84), (10, 2, 0.8)]
    assert five.seed_mean == pytest.approx(0.84)
    assert five.seed_std == pytest.approx(0.04)  # sample std of 0.88, 0.84, 0.80
    assert five.test_accuracy_mean == pytest.approx(0.8133333)
    assert five.test_accuracy_std == pytest.approx(statistics.stdev([0.83, 0.81, 0.80]))
    three = rows[0]
    assert len(three.runs) == 1 and three.seed_std is None and three.test_accuracy_mean is None


def test_stability_on_real_study(real_study):
    rows = stability_data(real_study.get_trials(), top=3)
    complete = sorted(search_trials(real_study, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    assert [r.number for r in rows] == [t.number for t in complete[:3]]
    for r, t in zip(rows, complete):
        values = [t.intermediate_values[e] for e in sorted(t.intermediate_values)][-3:]
        assert r.last_values == tuple(values)
        assert r.last_epochs_std == pytest.approx(statistics.pstdev(values))
        assert r.seed_std is None and len(r.runs) == 1 and r.runs[0].seed == 0


def test_importances_on_real_study(real_study):
    importances = param_importances(real_study.get_trials())
    assert importances.note is None
    assert set(importances.values) == {"lr_scheduler_type", "learning_rate", "warmup_ratio"}
    assert sum(importances.values.values()) == pytest.approx(1.0)


def test_importances_guards():
    study = optuna.create_study(direction="maximize")
    assert "2 or more complete trials (0 so far)" in param_importances(study.trials).note
    add(study, TrialState.COMPLETE, const(1e-3), [0.5])
    assert "(1 so far)" in param_importances(study.trials).note
    one_param = optuna.create_study(direction="maximize")
    for lr, v in ((1e-4, 0.5), (1e-3, 0.7), (1e-2, 0.6)):
        add(one_param, TrialState.COMPLETE, {"learning_rate": lr}, [v])
    assert param_importances(one_param.trials).note == "only learning_rate searched: nothing to compare"
    flat = optuna.create_study(direction="maximize")
    add(flat, TrialState.COMPLETE, const(1e-4), [0.5])
    add(flat, TrialState.COMPLETE, cos(1e-3), [0.5])
    assert "same value" in param_importances(flat.trials).note


def test_contour_data_uses_complete_cosine_trials_only(synthetic):
    contour = contour_data(synthetic.trials)
    assert contour.numbers == (1, 5, 7)  # not pruned #4, failed #6, repeats #9-#11, constant ones
    assert contour.learning_rate == (1e-4, 5e-3, 1e-2) and contour.warmup_ratio == (0.03, 0.02, 0.15)
    assert contour.note is None
    few = optuna.create_study(direction="maximize")
    add(few, TrialState.COMPLETE, cos(1e-3), [0.5])
    assert contour_data(few.trials).note == "the contour needs 3 or more complete cosine trials (1 so far)"


# ----------------------------------------------------------------------------- summary and files


def test_summary_on_real_study(real_study):
    trials = real_study.get_trials()
    s = summary_data(real_study, trials)
    best = best_search_trial(real_study)
    assert s.best_number == best.number and s.best_value == best.value
    assert s.val_accuracy == best.user_attrs["best_val_accuracy"]
    assert s.test_accuracy == best.user_attrs["test_accuracy"]
    assert s.test_macro_f1 == best.user_attrs["test_macro_f1"]
    assert s.epochs_set == REAL_EPOCHS
    assert s.counts["COMPLETE"] + s.counts["PRUNED"] == 8 and s.counts["FAIL"] == 0
    assert s.yaml_block == format_best(real_study, best, fmt="yaml")
    hydra = format_best(real_study, best, fmt="hydra")
    assert s.override_line == hydra.splitlines()[-1]
    assert s.override_line.startswith("python -m src.deepsc.finetune.finetune lr_scheduler_type=")


def test_summary_counts_and_failures(synthetic):
    add(synthetic, TrialState.WAITING, cos(5e-3, 0.02), repeat_of=5, repeat_seed=3, retry_of=11)
    s = summary_data(synthetic, synthetic.trials)
    assert (s.counts["COMPLETE"], s.counts["PRUNED"], s.counts["FAIL"]) == (5, 3, 1)
    assert (s.repeat_counts["COMPLETE"], s.repeat_counts["FAIL"], s.repeat_counts["WAITING"]) == (2, 1, 1)
    assert [(f.number, f.reason, f.retried_as) for f in s.failed] == [
        (6, "training diverged: loss is NaN", None),
        (11, "interrupted", 12),
    ]
    # Trial 3 has the highest single value (0.9), but trial 5 was confirmed over 3 seeds
    # (0.88, 0.84, 0.80): the confirmed configuration is chosen, by its mean.
    assert s.best_number == 5 and s.best_value == 0.88
    assert s.seeds == 3 and s.seeds_mean == pytest.approx(0.84) and s.seeds_sd == pytest.approx(0.04)
    assert s.seeds_test_accuracy == "0.8133 ± 0.0153"  # 0.83, 0.81, 0.80
    assert s.leader.startswith("not distinguishable from the runner-up (trial 3, -0.0600)")


def test_write_report_files(real_copy):
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{real_copy / 'pbmc68k' / 'study.db'}")
    files = write_report(study, folder=real_copy / "pbmc68k")
    # The only note: trials that completed at chance level (4 epochs at 1e-4 can stay there).
    chance = study.user_attrs["val_chance"]["val_accuracy"]
    low = [t.number for t in study.trials if t.state == TrialState.COMPLETE and t.value <= chance + 0.02]
    assert len(files.notes) == (1 if low else 0), files.notes
    assert all(f"#{n}" in files.notes[0] and "chance level" in files.notes[0] for n in low)
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
        assert float(row["duration_s"]) == t.user_attrs["duration_s"]
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
    assert files.notes == ["importances need 2 or more complete trials (1 so far)"]
    assert files.best_yaml is not None and "learning_rate: 0.0001" in files.best_yaml.read_text()
    data = files.data
    assert [p.label for p in data.frontier.points["constant"]] == ["guide: constant 1e-4"]
    assert data.stability[0].last_values == (0.4, 0.6)
    assert data.contour.note == "the contour needs 3 or more complete cosine trials (0 so far)"


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
    """Studies are placed by their database's folder, so equal names never overwrite each other."""
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
        ("pbmc68k-2", "pbmc68k/pbmc68k-2/report.html"),
    ]
    assert all((results / r.report).is_file() for r in index.rows)
    assert [name for name, _ in index.errors] == ["broken"]
