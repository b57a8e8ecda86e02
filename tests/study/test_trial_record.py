"""trial_record.py: the views every reader of a study derives from its trials' attributes."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.study._selection import best_search_trial
from deepsc_tune.study._trial_record import (
    STALE_REASON,
    Worker,
    complete_repeats,
    count_states,
    epochs_run,
    failure_reason,
    is_repeat,
    last_reported,
    metric_value,
    n_finished,
    other_data,
    prunable,
    result_attrs,
    search_trials,
    seed_of,
    setting,
    state_counts,
    study_backend,
    study_metric,
    trial_result,
    trial_settings,
    worker_of,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)
LR = {"learning_rate": FloatDistribution(1e-5, 1e-1, log=True)}


def make(state=TrialState.COMPLETE, curve=(), *, number=0, value=None, system_attrs=None, **user_attrs):
    trial = create_trial(
        state=state,
        value=value if value is not None else (max(curve) if state == TrialState.COMPLETE and curve else None),
        params={"learning_rate": 1e-3},
        distributions=LR,
        intermediate_values={i + 1: v for i, v in enumerate(curve)},
        user_attrs=user_attrs,
        system_attrs=system_attrs or {},
    )
    trial.number = number
    return trial


@pytest.fixture
def study():
    s = optuna.create_study(direction="maximize")
    for kwargs in (
        {"curve": (0.5, 0.7)},  # 0
        {"curve": (0.6, 0.9)},  # 1: best search trial
        {"curve": (0.9, 0.95), "repeat_of": 0, "repeat_seed": 1},  # 2: a better repeat, not a search trial
        {"curve": (0.9,), "state": TrialState.PRUNED},  # 3
        {"curve": (0.6, 0.9)},  # 4: ties with 1, the later one loses
        {"state": TrialState.FAIL, "fail_reason": "NaN"},  # 5
    ):
        state = kwargs.pop("state", TrialState.COMPLETE)
        curve = kwargs.pop("curve", ())
        s.add_trial(make(state, curve, **kwargs))
    return s


def test_repeats_are_not_search_trials_and_are_never_pruned(study):
    trials = study.get_trials()
    assert [t.number for t in trials if is_repeat(t)] == [2]
    assert [prunable(t) for t in trials] == [True, True, False, True, True, True]
    assert [t.number for t in search_trials(study)] == [0, 1, 3, 4, 5]
    assert [t.number for t in search_trials(study, states=(TrialState.COMPLETE,))] == [0, 1, 4]
    assert {k: [t.number for t in v] for k, v in complete_repeats(trials).items()} == {0: [2]}


def test_best_search_trial_ignores_repeats_and_breaks_ties_by_number(study):
    # One ranking (deepsc_tune.study._selection): trial 0 has a repeat (#2), so it leads as confirmed;
    # then the single-seed trials by value, ties to the lower number. Repeats are never listed.
    from deepsc_tune.study._selection import rank_configurations

    assert [c.number for c in rank_configurations(study.get_trials())] == [0, 1, 4]
    assert best_search_trial(study).number == 0


def test_best_search_trial_of_an_empty_study_is_a_clear_error():
    study = optuna.create_study(study_name="empty", direction="maximize")
    with pytest.raises(DeepscTuneError, match="study 'empty' has no completed trial yet \\(0 trials in all\\)"):
        best_search_trial(study)


def test_state_counts(study):
    counts = state_counts(study.get_trials())
    assert set(counts) == set(TrialState)
    assert (counts[TrialState.COMPLETE], counts[TrialState.PRUNED], counts[TrialState.FAIL]) == (4, 1, 1)
    assert counts[TrialState.WAITING] == 0
    assert n_finished(counts) == 5
    assert count_states(study)[TrialState.COMPLETE] == 3  # the repeat is left out


@pytest.mark.parametrize(
    ("state", "curve", "value", "expected", "last"),
    [
        (TrialState.COMPLETE, (0.5, 0.7, 0.6), 0.7, 0.7, 0.6),
        (TrialState.PRUNED, (0.5, 0.4), None, 0.4, 0.4),
        (TrialState.RUNNING, (0.3,), None, 0.3, 0.3),
        (TrialState.PRUNED, (), None, None, None),
        (TrialState.FAIL, (0.5,), None, None, 0.5),
        (TrialState.WAITING, (), None, None, None),
    ],
)
def test_metric_value_and_last_reported(state, curve, value, expected, last):
    trial = make(state, curve, value=value)
    assert metric_value(trial) == expected
    assert last_reported(trial) == last


@pytest.mark.parametrize(
    ("state", "user_attrs", "system_attrs", "expected"),
    [
        (TrialState.FAIL, {"fail_reason": "diverged"}, {}, "diverged"),
        (TrialState.FAIL, {}, {"fail_reason": "old study"}, "old study"),
        (TrialState.FAIL, {}, {}, STALE_REASON),  # Optuna failed it: heartbeats stopped
        (TrialState.COMPLETE, {"fail_reason": "of an earlier attempt"}, {}, None),
    ],
)
def test_failure_reason(state, user_attrs, system_attrs, expected):
    trial = make(state, (0.5,), system_attrs=system_attrs, **user_attrs)
    assert failure_reason(trial) == expected


@pytest.mark.parametrize(
    ("stored", "now", "expected"),
    [("abc", "abc", None), ("abc", "def", "abc"), (None, "def", None), ("abc", None, None)],
)
def test_other_data(stored, now, expected):
    assert other_data({"data_fingerprint": stored}, now) == expected


def test_study_attributes_with_defaults():
    assert study_metric({}) == "val_accuracy" and study_metric({"metric": "val_macro_f1"}) == "val_macro_f1"
    assert study_backend({}) == "builtin" and study_backend({"backend": "command"}) == "command"


def test_setting_is_the_searched_value_then_the_spaces_fixed_one():
    t = make(curve=(0.5,), repeat_of=0, repeat_seed=3)
    fixed = {"learning_rate": 9.0, "epoch": 7, "seed": 0}
    assert setting(t, "learning_rate", fixed=fixed) == 1e-3  # searched
    assert setting(t, "epoch", fixed=fixed) == 7  # fixed, from the search space
    assert setting(t, "seed", fixed=fixed) == 3  # the seed it ran with (a repeat's own)
    assert seed_of(make(curve=(0.5,)), fixed) == 0 and seed_of(make(curve=(0.5,))) is None  # the space's
    assert seed_of(make(curve=(0.5,), seed=5), fixed) == 5  # recorded by a study written before
    assert setting(t, "warmup_ratio", 0.0, fixed=fixed) == 0.0 and setting(t, "epoch") is None
    assert trial_settings(t, fixed) == {**fixed, **t.params, "seed": 3}


def test_a_study_written_before_keeps_its_recorded_settings():
    t = make(curve=(0.5,), settings={"learning_rate": 9.0, "epoch": 7})
    assert setting(t, "learning_rate") == 1e-3  # searched
    assert setting(t, "epoch", fixed={"epoch": 2}) == 7  # the trial's own record wins over the space


def test_epochs_run_is_recorded_else_the_epochs_reported():
    assert epochs_run(make(curve=(0.1, 0.2, 0.3))) == 3
    assert epochs_run(make(curve=(0.1,), epochs_run=4)) == 4


def test_trial_result_reads_the_short_keys_and_those_of_studies_before():
    attrs = result_attrs(
        best_epoch=2, val_accuracy=0.123456, val_macro_f1=0.05066666, test_accuracy=0.98765, test_macro_f1=None
    )
    assert attrs == {"best_epoch": 2, "val_acc": 0.1235, "val_f1": 0.05067, "test_acc": 0.9877, "test_f1": None}
    new = trial_result(make(curve=(0.1, 0.2, 0.15), **attrs))
    assert (new.best_epoch, new.val_accuracy, new.test_accuracy, new.test_macro_f1) == (2, 0.1235, 0.9877, None)
    assert new.epochs_run == 3 and new.duration_s is not None and new.duration_s >= 0  # Optuna's start and end
    old = trial_result(
        make(
            curve=(0.1, 0.2),
            val_accuracy=0.1,  # the last epoch's, then
            best_val_accuracy=0.2,
            best_val_macro_f1=0.3,
            test_accuracy=0.4,
            test_macro_f1=0.5,
            epochs_run=4,
            duration_s=1.5,
        )
    )
    assert (old.val_accuracy, old.val_macro_f1, old.test_accuracy, old.test_macro_f1) == (0.2, 0.3, 0.4, 0.5)
    assert old.epochs_run == 4 and old.duration_s == 1.5
    assert trial_result(make(TrialState.WAITING)).duration_s is None


def test_worker_is_one_short_string_and_old_dicts_still_read():
    w = Worker("gpu-node:17", 4242, "123")
    assert w.attr() == "gpu-node:17:4242:123"
    running = TrialState.RUNNING
    assert worker_of(make(running, worker=w.attr())) == w  # a colon in the host name
    assert worker_of(make(running, worker={"host": "a", "pid": 7, "started": "9"})) == Worker("a", 7, "9")
    assert worker_of(make(running, worker="a:1:")) == Worker("a", 1, None)
    assert worker_of(make(running)) is None and worker_of(make(running, worker="nonsense")) is None
