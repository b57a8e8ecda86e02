"""study.tracking: one MLflow / W&B run per trial, read back from offline stores.

MLflow: the local file store (``file:`` URI in a tmp folder; MLflow 3 asks for
``MLFLOW_ALLOW_FILE_STORE=true`` to use it), read back with ``MlflowClient``.
W&B: offline mode (``WANDB_MODE=offline``, tmp ``WANDB_DIR``). ``wandb.Api`` needs the server and
wandb 0.31 no longer ships a Python reader of its run files, so ``_wandb_records`` reads the
offline run's ``run-*.wandb`` transaction log (a LevelDB-style log of wandb's own protobuf
``Record`` messages, the file ``wandb sync`` uploads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from guards import in_ci
from optuna.trial import TrialState
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.backends._interface import EpochMetrics, FinetuneResult
from deepsc_tune.cli import app
from deepsc_tune.config._search_space import build_search_space
from deepsc_tune.config._tracking import MlflowTracker
from deepsc_tune.errors import ConfigError
from deepsc_tune.study._objective import build_objective
from deepsc_tune.study._trial_record import trial_result

if in_ci():  # CI installs '.[test]', which has both: a missing one must fail there, not skip
    import mlflow
    import wandb  # noqa: F401
else:
    mlflow = pytest.importorskip("mlflow", reason="pip install 'deepsc-tune[tracking]'")
    pytest.importorskip("wandb", reason="pip install 'deepsc-tune[tracking]'")

optuna.logging.set_verbosity(optuna.logging.ERROR)
runner = CliRunner()

# pbmc68k, 2 epochs, three known configurations: after epoch 1 the 1e-4 constant run is near
# chance (0.17 on this split) and the two others are above 0.39, so a threshold pruner at 0.3
# prunes exactly that one, deterministically (seed 0, one thread).
ENQUEUE = (
    "study.enqueue=[{lr_scheduler_type: constant, learning_rate: 1.0e-2}, "
    "{lr_scheduler_type: constant, learning_rate: 1.0e-4}, "
    "{lr_scheduler_type: cosine, learning_rate: 3.0e-3, warmup_ratio: 0.0}]"
)
RUN = [
    "run",
    "pbmc68k",
    "--threads",
    "1",
    "study.n_trials=3",
    "finetune.epoch=2",
    "finetune.hidden=[16]",
    ENQUEUE,
    "study.pruner={type: threshold, lower: 0.3}",
]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Both trackers' stores in tmp_path, nothing online."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    (tmp_path / "wandb").mkdir()
    return tmp_path


def _wandb_records(path: Path) -> list:
    """The protobuf records of an offline run file: 7-byte file header (``:W&B``, magic, version),
    then 32 KiB blocks of chunks, each with a 7-byte header (crc32, length, type: 1 full, 2 first,
    3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding at the end of a block
            pos += block - pos % block
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _wandb_runs(wandb_dir: Path) -> list[dict]:
    """Per offline run: group, name, config, history (step -> {key: value}), summary, exit code."""
    runs = []
    for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"config": {}, "history": {}, "summary": {}, "exit_code": None}
        for r in _wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run["group"], run["name"] = r.run.run_group, r.run.display_name
                for item in r.run.config.update:
                    run["config"][item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in r.config.update:
                    run["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                row = {i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
                run["history"][row["_step"]] = row
            elif kind == "summary":
                for item in r.summary.update:
                    run["summary"][item.key or ".".join(item.nested_key)] = json.loads(item.value_json)
            elif kind == "exit":
                run["exit_code"] = r.exit.exit_code
        runs.append(run)
    return runs


def _snapshot(db: Path):
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{db}")
    return [(t.number, t.state, t.params, t.value, t.intermediate_values) for t in study.get_trials()]


def test_real_run_logs_one_run_per_trial_to_mlflow_and_wandb(offline):
    """pbmc68k, 3 trials (2 complete, 1 pruned at epoch 1), both trackers at once."""
    results, uri = offline / "results", f"file:{offline / 'mlruns'}"
    tracking = f"study.tracking={{mlflow: {{tracking_uri: '{uri}'}}, wandb: {{project: tune-test}}}}"
    result = runner.invoke(app, [*RUN, "--results-dir", str(results), tracking])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{results / 'pbmc68k' / 'study.db'}")
    trials = {t.number: t for t in study.get_trials()}
    assert [trials[n].state for n in range(3)] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]

    # MLflow: the experiment is the study, one run per trial named by its number
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("pbmc68k")
    assert experiment is not None
    runs = {int(r.info.run_name): r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [0, 1, 2]
    for n, trial in trials.items():
        run = runs[n]
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert history == trial.intermediate_values
        assert run.data.tags["state"] == trial.state.name
        assert run.data.tags["optuna.study"] == "pbmc68k"
        assert run.data.tags["seed"] == "0"  # pbmc68k.yaml
        assert run.data.metrics["value"] == pytest.approx(max(trial.intermediate_values.values()))
        assert run.info.status == ("KILLED" if trial.state == TrialState.PRUNED else "FINISHED")
    assert float(f"{runs[0].data.metrics['test_accuracy']:.4g}") == trial_result(trials[0]).test_accuracy
    assert runs[1].data.metrics["pruned_at"] == 1

    # a repeat of the best configuration is one more run, told apart by its seed and repeat_of
    again = runner.invoke(app, ["repeat", "pbmc68k", "--top", "1", "--seeds", "1", "--results-dir", str(results)])
    assert again.exit_code == 0, again.output
    repeat = next(t for t in study.get_trials() if "repeat_of" in t.user_attrs)
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == str(repeat.number))
    assert run.data.tags["repeat_of"] == str(repeat.user_attrs["repeat_of"])
    assert run.data.tags["seed"] == str(repeat.user_attrs["repeat_seed"]) != "0"
    assert {
        m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")
    } == repeat.intermediate_values

    # W&B offline: one run per trial, grouped by the study
    wb = {r["name"]: r for r in _wandb_runs(offline / "wandb")}
    assert sorted(wb) == [f"pbmc68k-{n}" for n in range(4)]  # 3 searched, 1 repeat
    assert wb[f"pbmc68k-{repeat.number}"]["config"]["repeat_of"] == repeat.user_attrs["repeat_of"]
    for n, trial in trials.items():
        run = wb[f"pbmc68k-{n}"]
        assert run["group"] == "pbmc68k"
        assert {k: run["config"][k] for k in trial.params} == trial.params
        assert run["config"]["seed"] == 0
        assert {s: row["val_accuracy"] for s, row in run["history"].items()} == trial.intermediate_values
        assert run["summary"]["state"] == trial.state.name
        assert run["summary"]["value"] == pytest.approx(max(trial.intermediate_values.values()))
        assert run["exit_code"] == 0


class Failing:
    """One good epoch, then a crash."""

    def run(self, params, *, metric="val_accuracy", on_epoch=None, run_dir=None):
        on_epoch(EpochMetrics(epoch=1, val_accuracy=0.5, train_loss=1.0))
        raise RuntimeError("CUDA out of memory")


class Steady:
    def run(self, params, *, metric="val_accuracy", on_epoch=None, run_dir=None):
        history = [EpochMetrics(epoch=e, val_accuracy=0.5 + 0.1 * e) for e in (1, 2)]
        for m in history:
            on_epoch(m)
        return FinetuneResult(history, best_epoch=2, test_accuracy=0.6)


SPACE = {
    "name": "fake",
    "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
    "finetune": {"epoch": 2},
    "search": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
}


def test_failed_trial_is_logged_with_its_reason(offline):
    uri = f"file:{offline / 'mlruns'}"
    space = build_search_space({**SPACE, "study": {"tracking": {"mlflow": {"tracking_uri": uri}}}})
    study = optuna.create_study(study_name="fake", direction="maximize")
    study.optimize(build_objective(space, Failing()), n_trials=1, catch=(Exception,))
    study.optimize(build_objective(space, Steady()), n_trials=1)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fake")
    runs = {int(r.info.run_name): r for r in client.search_runs([experiment.experiment_id])}
    assert runs[0].data.tags["state"] == "FAIL"
    assert runs[0].data.tags["fail_reason"] == "RuntimeError: CUDA out of memory"
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["fail_reason"] == study.trials[0].user_attrs["fail_reason"]
    assert [m.value for m in client.get_metric_history(runs[0].info.run_id, "val_accuracy")] == [0.5]
    assert runs[1].data.tags["state"] == "COMPLETE"
    assert runs[1].data.metrics["value"] == pytest.approx(study.trials[1].value)


class ByRate:
    """Curves that identify the trial: val_accuracy = learning rate x epoch."""

    def run(self, params, *, metric="val_accuracy", on_epoch=None, run_dir=None):
        history = [EpochMetrics(epoch=e, val_accuracy=params["learning_rate"] * e) for e in (1, 2, 3)]
        for m in history:
            on_epoch(m)
        return FinetuneResult(history, best_epoch=3)


def test_trials_in_threads_keep_their_own_runs(offline):
    uri = f"file:{offline / 'mlruns'}"
    space = build_search_space(
        {**SPACE, "finetune": {"epoch": 3}, "study": {"tracking": {"mlflow": {"tracking_uri": uri}}}}
    )
    study = optuna.create_study(study_name="threads", direction="maximize")
    study.optimize(build_objective(space, ByRate()), n_trials=6, n_jobs=3)
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("threads")
    runs = {int(r.info.run_name): r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == list(range(6))
    for trial in study.trials:
        run = runs[trial.number]
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_accuracy")}
        assert history == pytest.approx(trial.intermediate_values)
        assert float(run.data.params["learning_rate"]) == pytest.approx(trial.params["learning_rate"])


def test_tracker_failure_never_fails_the_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    space = build_search_space(SPACE)
    study = optuna.create_study(direction="maximize")
    tracker = MlflowTracker(tracking_uri=f"file:{blocked}/mlruns")
    study.optimize(build_objective(space, Steady(), tracker=tracker), n_trials=1)
    assert study.trials[0].state == TrialState.COMPLETE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: mlflow tracking: starting the trial's run failed")


@pytest.mark.parametrize(
    "tracking, message",
    [
        ({"neptune": {}}, "study.tracking.neptune: unknown tracker; expected one of mlflow, wandb"),
        (
            {"mlflow": {"uri": "x"}},
            "study.tracking.mlflow.uri: unknown key; expected one of tracking_uri, experiment, tags",
        ),
        ({"mlflow": {"tracking_uri": 5}}, "study.tracking.mlflow.tracking_uri: expected a URI string"),
        ({"wandb": {"mode": "shared"}}, "study.tracking.wandb.mode: expected one of online, offline, disabled"),
        ({"wandb": {"tags": "a"}}, "study.tracking.wandb.tags: expected a list of strings, got 'a'"),
        ({"wandb": "offline"}, "study.tracking.wandb: expected a mapping of settings"),
        (["mlflow"], "study.tracking: expected a mapping such as {mlflow: {}} or {wandb: {}}"),
    ],
)
def test_bad_tracking_is_one_line(tracking, message):
    with pytest.raises(ConfigError) as err:
        build_search_space({**SPACE, "study": {"tracking": tracking}})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        build_search_space({**SPACE, "study": {"tracking": {"wandb": {}}}})
    assert str(err.value) == (
        "<search space>: study.tracking.wandb: the wandb package is not installed; "
        "run: pip install 'deepsc-tune[tracking]'"
    )


def test_tracking_is_not_part_of_the_study_meaning():
    plain = build_search_space(SPACE)
    tracked = build_search_space({**SPACE, "study": {"tracking": {"mlflow": {}}}})
    assert tracked.tracking == {"mlflow": {}} and plain.tracking is None
    assert tracked.sha256 == plain.sha256


def test_validate_does_not_import_the_tracking_libraries(tmp_path):
    space = tmp_path / "s.yaml"
    space.write_text(json.dumps({**SPACE, "study": {"tracking": {"mlflow": {}, "wandb": {}}}}))
    code = (
        "import sys; from deepsc_tune.config._search_space import load_search_space; "
        f"load_search_space({str(space)!r}); "
        "print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "[]"


def test_bad_tracking_on_the_command_line_changes_nothing(offline):
    results = offline / "results"
    args = [
        "run",
        "pbmc68k",
        "--results-dir",
        str(results),
        "--threads",
        "1",
        "study.n_trials=1",
        "finetune.epoch=1",
        "finetune.hidden=[16]",
        "study.enqueue=[]",
    ]
    assert runner.invoke(app, args).exit_code == 0
    db = results / "pbmc68k" / "study.db"
    before = _snapshot(db)
    bad = runner.invoke(app, [*args, "study.n_trials=2", "study.tracking={mlflow: {uri: x}}"])
    assert bad.exit_code == 2, bad.output
    lines = [ln for ln in bad.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "study.tracking.mlflow.uri: unknown key" in lines[0]
    assert "Traceback" not in bad.output
    assert _snapshot(db) == before
