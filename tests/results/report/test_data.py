"""report_data.py: the data each figure is drawn from, on a real small study and on synthetic
studies with known numbers (the figures themselves: test_report_figures.py)."""

from __future__ import annotations

import math
import statistics

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from report_studies import REAL_EPOCHS, add, const, cos

from deepsc_tune.results.report._data import (
    FrontierPoint,
    config_label,
    epoch_budget,
    epochs_set,
    format_number,
    frontier_data,
    frontier_line,
    learning_curves,
    metric_value,
    optimization_history,
    stability_data,
)
from deepsc_tune.results.report._parameters import (
    MIN_CONTOUR_SHADING,
    MIN_IMPORTANCE_TRIALS,
    contour_data,
    param_importances,
)
from deepsc_tune.study._selection import best_search_trial, select
from deepsc_tune.study._space_record import study_fixed
from deepsc_tune.study._trial_record import search_trials

optuna.logging.set_verbosity(optuna.logging.ERROR)

LR = FloatDistribution(1e-4, 1e-2, log=True)
WARMUP = FloatDistribution(0.0, 0.2)
SCHED = CategoricalDistribution(["constant", "cosine"])


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


def test_frontier_line_is_the_best_complete_trial_per_learning_rate_bin(real_study):
    frontier = frontier_data(real_study.get_trials())
    for scheduler, line in frontier.lines.items():
        points = frontier.points[scheduler]
        complete = [p for p in points if p.state == "COMPLETE"]
        assert [s.learning_rate for s in line] == sorted(s.learning_rate for s in line)
        by_number = {p.number: p for p in points}
        for s in line:
            vertex = by_number[s.number]
            assert vertex.state == "COMPLETE" and vertex.value == s.value  # pruned never shape it
            same_bin = [
                p
                for p in complete
                if math.floor(math.log10(p.learning_rate) * 3 + 1e-9)
                == math.floor(math.log10(s.learning_rate) * 3 + 1e-9)
            ]
            assert s.value == max(p.value for p in same_bin)
        if complete:
            assert max(s.value for s in line) == max(p.value for p in complete)


def point(number, lr, value, state="COMPLETE"):
    return FrontierPoint(number, "constant", lr, value, state, None, {})


def test_frontier_line_comes_back_down_at_high_learning_rates_and_skips_pruned():
    points = [
        point(0, 1e-4, 0.60),
        point(1, 1.1e-4, 0.65),  # same bin as trial 0: the better one is the vertex
        point(2, 1e-3, 0.86),
        point(3, 1.2e-3, 0.99, "PRUNED"),  # pruned: never a vertex, even when higher
        point(4, 1e-2, 0.68),  # too high a learning rate: the line drops
        point(5, 5e-2, 0.20, "PRUNED"),  # a bin with only a pruned trial: no vertex
    ]
    line = frontier_line(points)
    assert [(s.learning_rate, s.value, s.number) for s in line] == [
        (1.1e-4, 0.65, 1),
        (1e-3, 0.86, 2),
        (1e-2, 0.68, 4),
    ]
    assert frontier_line([]) == []


def test_frontier_marks_chosen_and_reference_levels(real_study):
    trials = real_study.get_trials()
    chance = {"val_accuracy": 0.339, "val_macro_f1": 0.05}
    frontier = frontier_data(trials, metric="val_accuracy", chance=chance, baseline={"accuracy": 0.9})
    assert frontier.chosen == select(trials).best.number
    assert frontier.chance == 0.339 and frontier.baseline == 0.9
    f1 = frontier_data(trials, metric="val_macro_f1", chance=chance, baseline={"macro_f1": 0.7})
    assert f1.chance == 0.05 and f1.baseline == 0.7
    bare = frontier_data(trials)
    assert bare.chance is None and bare.baseline is None


def test_pruned_points_carry_the_epoch_they_reached(real_study):
    trials = {t.number: t for t in real_study.get_trials()}
    pruned = [p for ps in frontier_data(list(trials.values())).points.values() for p in ps if p.state == "PRUNED"]
    for p in pruned:
        assert p.epochs == len(trials[p.number].intermediate_values)
        assert p.epochs < epochs_set(trials[p.number], real_study.user_attrs["epoch"])


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
    budget = epoch_budget(trials, default_epochs=real_study.user_attrs["epoch"])
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert budget.saved == sum(REAL_EPOCHS - len(t.intermediate_values) for t in pruned) > 0
    assert budget.trained == sum(len(t.intermediate_values) for t in trials)
    assert budget.without_pruning <= REAL_EPOCHS * len(trials)


# ----------------------------------------------------------------------------- stability, importances


def test_stability_exact(synthetic):
    rows = stability_data(synthetic.trials, top=3, last=3)
    # The one ranking (deepsc_tune.study._selection), as `best` chooses: #5, confirmed over 3 seeds (mean
    # 0.84), first; then the single-seed trials by value, #3 (0.9) and #7 (0.8).
    assert [r.number for r in rows] == [5, 3, 7]
    five = rows[0]
    assert five.label == "cosine 5e-3 warmup 0.02"
    assert five.last_values == (0.8, 0.88, 0.86)
    assert five.last_epochs_std == pytest.approx(statistics.pstdev([0.8, 0.88, 0.86]))
    assert [(r.number, r.seed, r.value) for r in five.runs] == [(5, 0, 0.88), (9, 1, 0.84), (10, 2, 0.8)]
    assert five.seed_mean == pytest.approx(0.84)
    assert five.seed_std == pytest.approx(0.04)  # sample std of 0.88, 0.84, 0.80
    assert five.test_accuracy_mean == pytest.approx(0.8133333)
    assert five.test_accuracy_std == pytest.approx(statistics.stdev([0.83, 0.81, 0.80]))
    three = rows[1]
    assert len(three.runs) == 1 and three.seed_std is None and three.test_accuracy_mean is None


def test_stability_on_real_study(real_study, real_results):
    rows = stability_data(real_study.get_trials(), top=3, fixed=study_fixed(real_study, real_results / "pbmc68k"))
    complete = sorted(search_trials(real_study, states=(TrialState.COMPLETE,)), key=lambda t: -t.value)
    assert [r.number for r in rows] == [t.number for t in complete[:3]]
    for r, t in zip(rows, complete):
        values = [t.intermediate_values[e] for e in sorted(t.intermediate_values)][-3:]
        assert r.last_values == tuple(values)
        assert r.last_epochs_std == pytest.approx(statistics.pstdev(values))
        assert r.seed_std is None and len(r.runs) == 1 and r.runs[0].seed == 0


def test_importances_need_enough_trials_on_real_study(real_study):
    """The shipped 10-trial pbmc68k study: fewer complete trials than importances need -> one line."""
    complete = [
        t for t in real_study.get_trials() if t.state == TrialState.COMPLETE and "repeat_of" not in t.user_attrs
    ]
    importances = param_importances(real_study.get_trials())
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        assert importances.values == {}
        assert f"need {MIN_IMPORTANCE_TRIALS} or more complete trials" in importances.note
        assert f"({len(complete)} so far): not drawn" in importances.note
    else:
        assert importances.note is None and sum(importances.values.values()) == pytest.approx(1.0)


def test_importances_guards():
    study = optuna.create_study(direction="maximize")
    assert "no parameter searched" in param_importances(study.trials).note
    add(study, TrialState.COMPLETE, const(1e-3), [0.5])
    add(study, TrialState.COMPLETE, cos(1e-2), [0.6])
    assert "(2 so far): not drawn" in param_importances(study.trials).note
    one_param = optuna.create_study(direction="maximize")
    for lr, v in ((1e-4, 0.5), (1e-3, 0.7), (1e-2, 0.6)):
        add(one_param, TrialState.COMPLETE, {"learning_rate": lr}, [v])
    assert param_importances(one_param.trials).note == "only learning_rate searched: no importances to compare"
    flat = optuna.create_study(direction="maximize")
    for i in range(MIN_IMPORTANCE_TRIALS):
        add(flat, TrialState.COMPLETE, (const if i % 2 else cos)(10 ** (-4 + i / 5)), [0.5])
    assert "same value" in param_importances(flat.trials).note


def test_contour_data_uses_complete_cosine_trials_only(synthetic):
    contour = contour_data(synthetic.trials)
    assert contour.numbers == (1, 5, 7)  # not pruned #4, failed #6, repeats #9-#11, constant ones
    assert contour.learning_rate == (1e-4, 5e-3, 1e-2) and contour.warmup_ratio == (0.03, 0.02, 0.15)
    # Three points are no contour: one line instead, naming what it needs.
    assert contour.note == (
        f"the learning_rate x warmup_ratio contour needs {MIN_CONTOUR_SHADING} or more complete cosine "
        "trials (3 so far): not drawn; the frontier shows them"
    )
    enough = optuna.create_study(direction="maximize")
    for i in range(MIN_CONTOUR_SHADING):
        add(enough, TrialState.COMPLETE, cos(10 ** (-4 + i / 4), 0.02 * i), [0.5 + 0.01 * i])
    assert contour_data(enough.trials).note is None


def _trial(number, params, value, state=TrialState.COMPLETE):
    dists = {"lr_scheduler_type": SCHED, "learning_rate": LR, "warmup_ratio": WARMUP}
    t = create_trial(
        params=params,
        distributions={k: dists[k] for k in params},
        value=value if state == TrialState.COMPLETE else None,
        state=state,
    )
    t.number = number
    return t


@pytest.mark.parametrize("constant_state", [TrialState.PRUNED, TrialState.COMPLETE])
def test_importances_compare_parameters_that_vary_and_name_the_conditional_one(constant_state):
    """warmup_ratio (cosine only) would narrow Optuna to the cosine trials, where the scheduler never
    varies: importances compare the scheduler and the learning rate over all trials instead, and one
    line says warmup_ratio is left out. Values depend on the learning rate only."""
    cosine = [
        _trial(
            i,
            {"lr_scheduler_type": "cosine", "learning_rate": 10 ** (-4 + i / 3), "warmup_ratio": 0.02 * i},
            0.5 + 0.03 * i,
        )
        for i in range(6)
    ]
    constant = [
        _trial(
            6 + i,
            {"lr_scheduler_type": "constant", "learning_rate": 10 ** (-4 + (i + 0.5) / 3)},
            0.515 + 0.03 * i,
            constant_state,
        )
        for i in range(6)
    ]
    result = param_importances(cosine + constant)
    if constant_state == TrialState.PRUNED:
        # Only the 6 cosine trials complete: too few to attribute anything.
        assert result.values == {} and "(6 so far): not drawn" in result.note
        return
    assert result.note is None
    assert set(result.values) == {"lr_scheduler_type", "learning_rate"}
    assert result.values["learning_rate"] > result.values["lr_scheduler_type"]
    assert result.explanations == (
        "over the 12 complete trials that have learning_rate, lr_scheduler_type; warmup_ratio left out "
        "(searched under a condition, or never varied there)",
    )
