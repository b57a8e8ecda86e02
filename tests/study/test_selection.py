"""selection.py: configurations ranked by their mean over seeds, and the leader-vs-runner-up test."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from scipy import stats

from deepsc_tune.study._selection import (
    compare_leaders,
    configurations,
    format_mean_sd,
    rank_configurations,
    select,
    trial_score,
    welch_test,
)

DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
    "lr_scheduler_type": CategoricalDistribution(["constant", "cosine"]),
}


def add(study, lr, curve, *, state=TrialState.COMPLETE, **user_attrs):
    """A trial whose value is the best of ``curve`` (the best-epoch rule)."""
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            value=max(curve) if state == TrialState.COMPLETE else None,
            params={"learning_rate": lr, "lr_scheduler_type": "constant"},
            distributions=DISTRIBUTIONS,
            intermediate_values={i + 1: v for i, v in enumerate(curve)},
            user_attrs=user_attrs,
        )
    )
    return study.trials[-1]


@pytest.fixture
def study():
    """Trial 0 leads on one seed (0.95); trial 1 is confirmed (0.90, 0.86, 0.82) and so is 2."""
    s = optuna.create_study(direction="maximize")
    add(s, 1e-2, [0.5, 0.95, 0.7], test_accuracy=0.80)  # 0: a lucky single seed
    add(s, 1e-3, [0.6, 0.9, 0.88], test_accuracy=0.85, test_macro_f1=0.7)  # 1
    add(s, 3e-3, [0.4, 0.8, 0.79], test_accuracy=0.84)  # 2
    add(s, 1e-4, [0.3, 0.6], state=TrialState.PRUNED)  # 3: never ranked
    add(s, 1e-3, [0.7, 0.86, 0.86], repeat_of=1, repeat_seed=1, test_accuracy=0.83, test_macro_f1=0.6)  # 4
    add(s, 1e-3, [0.7, 0.82, 0.8], repeat_of=1, repeat_seed=2, test_accuracy=0.81)  # 5
    add(s, 3e-3, [0.5, 0.7, 0.7], repeat_of=2, repeat_seed=1, test_accuracy=0.80)  # 6
    add(s, 1e-3, [0.1], state=TrialState.FAIL, repeat_of=1, repeat_seed=3)  # 7: not counted
    return s


def test_configurations_group_search_trial_with_complete_repeats(study):
    by = {c.number: c for c in configurations(study.trials)}
    assert sorted(by) == [0, 1, 2]  # the pruned trial and the repeats are no configurations
    c = by[1]
    assert [t.number for t in c.trials] == [1, 4, 5] and c.values == (0.9, 0.86, 0.82)
    assert c.n == 3 and c.confirmed
    assert c.mean == pytest.approx(0.86)
    assert c.sd == pytest.approx(0.04)  # sqrt(((0.04)^2 + 0 + (0.04)^2) / 2)
    assert c.test_accuracy == (0.85, 0.83, 0.81) and c.test_macro_f1 == (0.7, 0.6)
    assert by[0].n == 1 and by[0].sd is None and not by[0].confirmed
    assert by[2].mean == pytest.approx(0.75) and by[2].sd == pytest.approx(math.sqrt(0.005))
    assert format_mean_sd(c) == "0.8600 ± 0.0400 (n=3)" and format_mean_sd(by[0]) == "0.9500 (n=1)"


def test_confirmed_configurations_rank_ahead_of_single_seeds(study):
    """0.95 on one seed does not beat a configuration measured on three (the winner's curse)."""
    assert [c.number for c in rank_configurations(study.trials)] == [1, 2, 0]
    plain = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    # without repeats: Optuna's best trial first, by value
    assert [c.number for c in rank_configurations(plain)] == [0, 1, 2]
    assert rank_configurations(plain)[0].trial.number == study.best_trial.number


def test_ties_go_to_the_earlier_trial():
    s = optuna.create_study(direction="maximize")
    add(s, 1e-2, [0.8])
    add(s, 1e-3, [0.8])
    assert [c.number for c in rank_configurations(s.trials)] == [0, 1]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [("best_epoch", 0.95), ("last_epoch", 0.7), ("last3", (0.5 + 0.95 + 0.7) / 3)],
)
def test_rules(study, rule, expected):
    assert trial_score(study.trials[0], rule=rule) == pytest.approx(expected)


def test_last3_uses_the_last_three_epochs_only():
    s = optuna.create_study(direction="maximize")
    t = add(s, 1e-2, [0.1, 0.2, 0.6, 0.7, 0.8])
    assert trial_score(t, rule="last3") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="unknown selection rule 'median'"):
        trial_score(t, rule="median")


def test_rule_changes_the_ranking(study):
    # last epoch: trial 1 -> (0.88, 0.86, 0.8) mean 0.8467; trial 2 -> (0.79, 0.7) mean 0.745
    ranking = rank_configurations(study.trials, rule="last_epoch")
    assert [c.number for c in ranking] == [1, 2, 0]
    assert ranking[0].mean == pytest.approx((0.88 + 0.86 + 0.8) / 3)
    plain = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    # single seeds by last epoch: 1 (0.88) > 2 (0.79) > 0 (0.7): the lucky peak of 0 no longer leads
    assert [c.number for c in rank_configurations(plain, rule="last_epoch")] == [1, 2, 0]


def test_welch_statistic_and_df_by_hand():
    a, b = [0.9, 0.8, 0.7], [0.5, 0.4, 0.3]
    t, df, p = welch_test(a, b)
    # both variances 0.01: se^2 = 0.01/3 + 0.01/3; t = 0.4 / sqrt(0.02/3); df = 4 exactly
    assert t == pytest.approx(0.4 / math.sqrt(0.02 / 3))
    assert df == pytest.approx(4.0)
    assert p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert welch_test([0.9], b) is None
    assert welch_test([0.8, 0.8], [0.8, 0.8])[2] == 1.0 and welch_test([0.9, 0.9], [0.8, 0.8])[2] == 0.0


def test_leader_distinguishable_or_not():
    s = optuna.create_study(direction="maximize")
    add(s, 1e-2, [0.9])
    add(s, 1e-3, [0.5])
    add(s, 1e-2, [0.8], repeat_of=0, repeat_seed=1)
    add(s, 1e-2, [0.7], repeat_of=0, repeat_seed=2)
    add(s, 1e-3, [0.4], repeat_of=1, repeat_seed=1)
    add(s, 1e-3, [0.3], repeat_of=1, repeat_seed=2)
    sel = select(s.trials)
    assert sel.best.number == 0 and sel.leader_test.distinguishable
    assert sel.leader_test.difference == pytest.approx(0.4)
    assert "ahead of the runner-up (trial 1) by +0.4000" in sel.leader_test.reason

    close = optuna.create_study(direction="maximize")
    for lr, vals in ((1e-2, [0.9, 0.7, 0.8]), (1e-3, [0.85, 0.75, 0.65])):
        first = add(close, lr, [vals[0]])
        for i, v in enumerate(vals[1:], 1):
            add(close, lr, [v], repeat_of=first.number, repeat_seed=i)
    sel = select(close.trials)
    expected_p = stats.ttest_ind([0.9, 0.7, 0.8], [0.85, 0.75, 0.65], equal_var=False).pvalue
    assert sel.best.number == 0 and not sel.leader_test.distinguishable
    assert sel.leader_test.p == pytest.approx(expected_p) and expected_p > 0.05
    assert sel.leader_test.reason.startswith("not distinguishable from the runner-up (trial 3, +0.0500")


def test_single_seed_leader_is_not_distinguishable(study):
    plain = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    test = compare_leaders(rank_configurations(plain))
    assert not test.distinguishable and test.p is None
    assert "trial 0 and trial 1 ran with one seed only" in test.reason
    assert compare_leaders(rank_configurations(plain)[:1]) is None


def test_no_complete_trial_selects_nothing():
    s = optuna.create_study(direction="maximize")
    add(s, 1e-2, [0.2], state=TrialState.PRUNED)
    sel = select(s.trials)
    assert sel.best is None and sel.ranking == [] and sel.leader_test is None


def test_mean_sd_match_statistics(study):
    c = next(c for c in configurations(study.trials) if c.number == 1)
    assert c.mean == statistics.fmean(c.values) and c.sd == statistics.stdev(c.values)


def test_pick_notes_and_record(study):
    from deepsc_tune.study._selection import pick_notes, pick_record

    sel = select(study.trials)
    notes = pick_notes(sel, 1, metric="val_accuracy")
    assert notes[0] == (
        "val_accuracy over seeds: 0.8600 ± 0.0400 (n=3); test accuracy 0.8300 ± 0.0200 "
        "/ macro-F1 0.6500 ± 0.0707 (reported only)"
    )
    assert notes[1].startswith("not distinguishable from the runner-up (trial 2, +0.1100; Welch t-test p=")
    assert pick_notes(sel, 0, metric="val_accuracy") == []  # one seed, not the leader
    record = pick_record(sel, 1)
    assert record["seeds"]["trials"] == [1, 4, 5] and record["seeds"]["n"] == 3
    assert record["distinguishable"] is False
    assert pick_record(sel, 2)["distinguishable"] is None  # only the leader is tested
