"""What a study stores, as Optuna's own tools see it: a named metric, short attributes (the
search space beside the study, per-epoch details in the trial folder), readable `optuna studies`
and `optuna trials`, optuna-dashboard's JSON API; old studies (space and history as attributes)
still read; `status --json`; a time budget that stops between trials."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from guards import missing
from optuna.trial import TrialState
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.study._objective import TRIAL_FILE, epoch_history
from deepsc_tune.study._space_record import read_record, record_path

runner = CliRunner()
EPOCHS = 10


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def load(results: Path, name: str = "pbmc68k") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / name / 'study.db'}")


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    out = cli("run", "pbmc68k", "--results-dir", results, "study.n_trials=5", f"finetune.epoch={EPOCHS}")
    assert out.exit_code == 0, out.output
    return results


def optuna_cli(*args: str) -> list[str]:
    exe = shutil.which("optuna") or pytest.fail("the optuna command is not installed")
    proc = subprocess.run(
        [exe, *args], check=False, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"}
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_metric_is_named_and_attributes_are_short(small):
    study = load(small)
    assert study.metric_names == ["val_accuracy"]
    attrs = study.user_attrs
    assert "search_space_text" not in attrs and "config" not in attrs
    assert attrs["dataset"] == "pbmc68k_reduced" and attrs["epoch"] == EPOCHS
    record = read_record(attrs, small / "pbmc68k")
    assert record["text"] == (REPO / "search_spaces" / "pbmc68k.yaml").read_text()
    assert record["config"]["study"]["n_trials"] == 5  # overrides applied
    assert record_path(small / "pbmc68k", attrs["search_space_sha256"]).is_file()
    for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)):
        assert "history" not in t.user_attrs
        details = json.loads((small / "pbmc68k" / "trials" / f"{t.number:05d}" / TRIAL_FILE).read_text())
        assert [h["epoch"] for h in details["history"]] == sorted(t.intermediate_values)
        assert details["steps_per_epoch"] >= 1 and details["schedule"]["lr_scheduler_type"]
        assert [h["val_accuracy"] for h in details["history"]] == [h["val_accuracy"] for h in epoch_history(t)]


def test_optuna_cli_output_is_readable(small):
    db = f"sqlite:///{small / 'pbmc68k' / 'study.db'}"
    studies = optuna_cli("studies", "--storage", db)
    trials = optuna_cli("trials", "--storage", db, "--study-name", "pbmc68k")
    # Before: ~2,900 and ~3,700 characters (the YAML text, the config, 10 epochs of history).
    # Now: ~850 for the study, of which the chance levels and the logistic-regression baseline (two
    # small dicts that every view of the result reads) take ~170; under 400 for the trials, whose
    # settings, every epoch and the device are in each trial's trial.json, and whose results are
    # the best epoch's, to 4 digits. Optuna's own columns (value, times, params) take ~240 of them;
    # the host name in `worker` adds its length: measured as for a 20-character host name.
    assert max(map(len, studies)) < 900, max(map(len, studies))
    width = max(map(len, trials)) - len(socket.gethostname()) + 20
    assert width < 400, (width, trials[-2])
    assert len(trials) == 5 + 4  # five rows (two searched, with long floats), a header and three rules


def dashboard_get(app, path: str) -> dict:
    """GET `path` from optuna-dashboard's WSGI app in-process (no server, no extra dependency)."""
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    assert status[0].startswith("200"), (path, status, body[:300])
    return json.loads(body)


def test_optuna_dashboard_shows_the_metric(small):
    """What optuna-dashboard's browser page reads, from its own JSON API: the study listed, the
    objective named, each trial's params, value and per-epoch curve, and short attributes."""
    try:
        import optuna_dashboard
    except ImportError:
        missing("optuna-dashboard not installed (the test extra): pip install -e '.[test]'")
    study = load(small)
    app = optuna_dashboard.wsgi(f"sqlite:///{small / 'pbmc68k' / 'study.db'}")
    listed = dashboard_get(app, "/api/studies")["study_summaries"]
    assert [(s["study_name"], s["directions"]) for s in listed] == [("pbmc68k", ["maximize"])]
    detail = dashboard_get(app, f"/api/studies/{listed[0]['study_id']}")
    assert detail.get("objective_names") == ["val_accuracy"]  # absent when the study has no metric name
    assert detail["has_intermediate_values"] is True
    served = {t["number"]: t for t in detail["trials"]}
    assert sorted(served) == [t.number for t in study.trials]
    for t in study.trials:
        d = served[t.number]
        assert d["state"] == t.state.name.capitalize()
        assert {p["name"]: p["param_external_value"] for p in d["params"]} == {k: str(v) for k, v in t.params.items()}
        assert d.get("values") == t.values
        assert [(v["step"], v["value"]) for v in d["intermediate_values"]] == sorted(t.intermediate_values.items())
        if t.state == TrialState.COMPLETE:
            assert len(d["intermediate_values"]) == EPOCHS
    assert [t["number"] for t in detail["best_trials"]] == [study.best_trial.number]
    # The dashboard cuts JSON attributes at 1,024 characters but shows strings whole; all stay short.
    attrs = detail["user_attrs"] + [a for t in detail["trials"] for a in t["user_attrs"]]
    assert attrs and max(len(a["value"]) for a in attrs) < 300, max(attrs, key=lambda a: len(a["value"]))


def _old_style_copy(small: Path, dest: Path) -> Path:
    """The same trials in a study written the way deepsc-tune did before: the YAML text and the
    config as study attributes, each trial's history as an attribute."""
    new = load(small)
    record = read_record(new.user_attrs, small / "pbmc68k")
    folder = dest / "pbmc68k"
    folder.mkdir(parents=True)
    old = optuna.create_study(study_name="pbmc68k", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    attrs = {k: v for k, v in new.user_attrs.items() if k not in ("dataset", "description", "epoch")}
    for key, value in {**attrs, "search_space_text": record["text"], "config": record["config"]}.items():
        old.set_user_attr(key, value)
    for t in new.get_trials():
        t.set_user_attr(
            "history",
            [{"epoch": e, "val_accuracy": v, "val_loss": 1.0} for e, v in sorted(t.intermediate_values.items())],
        )
        # the results under their long names, the counts, the seed, the device, a worker dict
        u = t.user_attrs
        for new_key, old_key in (("val_acc", "best_val_accuracy"), ("test_acc", "test_accuracy")):
            if new_key in u:
                t.set_user_attr(old_key, u[new_key] + 0.00001)  # told apart from the new keys' values
        t.set_user_attr("epochs_run", len(t.intermediate_values) + 10)
        t.set_user_attr("duration_s", 12.5)
        t.set_user_attr("seed", 4)
        t.set_user_attr("device", "cuda:7")
        t.set_user_attr("worker", {"host": "old", "pid": 1, "started": "1"})
        t.user_attrs.pop("val_acc", None)
        t.user_attrs.pop("test_acc", None)
        old.add_trial(t)
    return dest


def test_old_studies_still_read(small, tmp_path):
    results = _old_style_copy(small, tmp_path / "old")
    before = [(t.number, t.state, t.value) for t in load(results).trials]
    status = cli("status", "pbmc68k", "--results-dir", results)
    assert status.exit_code == 0 and "COMPLETE" in status.output
    best = cli("best", "pbmc68k", "--results-dir", results)
    assert best.exit_code == 0 and "learning_rate:" in best.output
    report = cli("report", "pbmc68k", "--results-dir", results)
    assert report.exit_code == 0, report.output
    html = (results / "pbmc68k" / "report.html").read_text()
    assert "pbmc68k_reduced" in html  # the dataset, from the old config attribute
    t = load(results).trials[0]
    assert epoch_history(t)[0]["val_loss"] == 1.0  # the old attribute wins
    doc = json.loads(cli("status", "pbmc68k", "--results-dir", results, "--json").output)["trials"][0]
    assert doc["test_accuracy"] == t.user_attrs["test_accuracy"] and doc["duration_s"] == 12.5
    assert doc["epochs_run"] == len(t.intermediate_values) + 10 and doc["seed"] == 4 and doc["device"] == "cuda:7"
    assert [(t.number, t.state, t.value) for t in load(results).trials] == before


def test_status_json(small):
    out = cli("status", "pbmc68k", "--results-dir", small, "--json")
    assert out.exit_code == 0, out.output
    doc = json.loads(out.output)
    study = load(small)
    assert doc["study"] == "pbmc68k" and doc["metric"] == "val_accuracy"
    assert sum(doc["counts"].values()) == len(study.trials) == len(doc["trials"])
    first = doc["trials"][0]
    assert first["params"] == study.trials[0].params and first["state"] == study.trials[0].state.name
    assert len(first["intermediate_values"]) == len(study.trials[0].intermediate_values)
    assert first["device"] == "cpu" and first["seed"] == 0  # from trial.json and the search space


def test_time_budget_stops_between_trials(small, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(small, results)
    before = [(t.number, t.state, t.value) for t in load(results).trials]
    out = cli(
        "run", "pbmc68k", "--results-dir", results, "study.n_trials=6", f"finetune.epoch={EPOCHS}", "--timeout", "0.001"
    )
    assert out.exit_code == 0, out.output
    assert "time budget of 0.001 s spent: stopped between trials" in out.output
    after = load(results).trials
    assert [(t.number, t.state, t.value) for t in after][: len(before)] == before
    assert not [t for t in after if t.state in (TrialState.RUNNING, TrialState.FAIL)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "0"], "--timeout: expected seconds > 0, got 0"),
        (["study.timeout=soon"], "study.timeout: expected seconds > 0 or null, got 'soon'"),
    ],
)
def test_bad_time_budget_is_one_line(small, tmp_path, args, message):
    results = tmp_path / "results"
    shutil.copytree(small, results)
    before = [(t.number, t.state, t.value) for t in load(results).trials]
    out = cli("run", "pbmc68k", "--results-dir", results, "study.n_trials=3", f"finetune.epoch={EPOCHS}", *args)
    assert out.exit_code == 2 and "Traceback" not in out.output and message in out.output
    assert [(t.number, t.state, t.value) for t in load(results).trials] == before


def test_python_module_entry_point_matches():
    proc = subprocess.run(
        [sys.executable, "-m", "deepsc_tune.cli", "status", "--help"],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0 and "--json" in proc.stdout
