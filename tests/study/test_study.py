"""The persistent study: create, resume, refuse a changed space, recover orphans, stop on failures."""

from __future__ import annotations

import optuna
import pytest
from fakes import make_space, study_curve
from optuna.trial import TrialState

from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.study._objective import epoch_history
from deepsc_tune.study._selection import best_search_trial
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import TooManyFailures, open_study, run_study
from deepsc_tune.study._trial_record import trial_result, trial_settings

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture
def storage(tmp_path):
    return open_storage(default_storage_url("curve", tmp_path))


def test_runs_to_target_and_records_attrs(storage):
    space = make_space()
    study = open_study(space, storage=storage, study_name="curve", data_fingerprint="abc")
    summary = run_study(space, study_curve(), study=study)
    assert summary.finished == 6 and summary.ran == 6
    trials = study.get_trials()
    # the usage guide's config ran first, tagged
    assert trials[0].params == {"lr_scheduler_type": "constant", "learning_rate": 1e-4}
    assert trials[0].user_attrs["enqueued"] is True
    t = best_search_trial(study)
    u = t.user_attrs
    result = trial_result(t)
    assert result.epochs_run == 4 and result.best_epoch == 4
    assert result.test_accuracy is not None and len(epoch_history(t)) == 4
    assert "history" not in u  # per-epoch values live in intermediate values, written once each
    assert sorted(t.intermediate_values) == [1, 2, 3, 4]
    assert result.val_accuracy == float(f"{t.value:.4g}")  # the best epoch's, to 4 digits
    assert set(u) - {"enqueued"} == {"worker", "best_epoch", "val_acc", "val_f1", "test_acc", "test_f1"}  # short
    assert "settings" not in u and trial_settings(t, space.fixed)["epoch"] == 4
    assert study.user_attrs["search_space_sha256"] == space.sha256
    assert study.user_attrs["data_fingerprint"] == "abc"
    assert study.user_attrs["optuna_version"] == optuna.__version__


def test_resume_continues_to_new_target_and_keeps_trials(storage):
    space = make_space(n_trials=3)
    study = open_study(space, storage=storage, study_name="curve")
    run_study(space, study_curve(), study=study)
    before = {t.number: t.value for t in study.get_trials()}
    space5 = make_space(n_trials=5)  # n_trials may change between runs
    study = open_study(space5, storage=storage, study_name="curve")
    summary = run_study(space5, study_curve(), study=study)
    assert summary.ran == 2 and summary.finished == 5
    after = {t.number: t.value for t in study.get_trials()}
    assert all(after[n] == v for n, v in before.items())
    # running again with the target met does nothing
    assert run_study(space5, study_curve(), study=study).ran == 0


def test_changed_search_space_is_refused(storage, tmp_path):
    space = make_space()
    open_study(space, storage=storage, study_name="curve", record_dir=tmp_path)
    changed = make_space(epoch=5)
    with pytest.raises(ConfigError, match=r"different search space \(changed: finetune.epoch\).*--study-name"):
        open_study(changed, storage=storage, study_name="curve", record_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"different search space; refusing"):  # no copy here
        open_study(changed, storage=storage, study_name="curve", record_dir=tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="different data"):
        open_study(space, storage=storage, study_name="curve2", data_fingerprint="a")
        open_study(space, storage=storage, study_name="curve2", data_fingerprint="b")


def test_pruner_prunes_hopeless_trials(storage):
    space = make_space(n_trials=12, pruner={"type": "median", "n_startup_trials": 2, "n_warmup_steps": 0})
    study = open_study(space, storage=storage, study_name="curve")
    run_study(space, study_curve(), study=study)
    pruned = [t for t in study.get_trials() if t.state == TrialState.PRUNED]
    assert pruned, "a median pruner over a peaked curve must prune some trials"
    for t in pruned:
        assert sorted(t.intermediate_values) == list(range(1, trial_result(t).epochs_run + 1))
        assert trial_result(t).epochs_run < 4


def test_failed_trial_recorded_and_study_goes_on(storage):
    space = make_space(n_trials=5, max_failures=20)
    study = open_study(space, storage=storage, study_name="curve")
    ft = study_curve(fail_when=lambda p: p["learning_rate"] > 1e-2)
    run_study(space, ft, study=study)
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    assert failed, "random start-up trials in [1e-5, 1e-1] should hit the failing range"
    for t in failed:
        assert "diverged" in t.user_attrs["fail_reason"]
    finished = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5


def test_consecutive_failures_stop_the_run(storage):
    space = make_space(n_trials=5)
    study = open_study(space, storage=storage, study_name="curve")
    with pytest.raises(TooManyFailures, match="3 failed trials in a row.*diverged"):
        run_study(space, study_curve(fail_when=lambda p: True), study=study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 3


def test_best_on_empty_study_is_a_clear_error(storage):
    study = open_study(make_space(), storage=storage, study_name="curve")
    with pytest.raises(DeepscTuneError, match="no completed trial yet"):
        best_search_trial(study)
