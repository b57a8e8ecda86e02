"""Which configuration to pick: rank by the mean over seeds, and say when the lead is noise.

A *configuration* is one COMPLETE search trial together with its COMPLETE repeats (trials tagged
``repeat_of`` = its number, made by ``deepsc-tune repeat`` or ``study.confirm``). Its score is
the mean, over those seeds, of one number per trial chosen by a *selection rule* (validation
only):

``best_epoch`` (default)
    the trial's value: its best validation metric over the epochs run (Optuna's ``trial.value``);
``last_epoch``
    the metric at the trial's last epoch;
``last3``
    the mean of the metric over its last three epochs (fewer when it ran fewer).

Ranking (:func:`rank_configurations`): configurations with two or more seeds come first, by
mean; single-seed configurations follow, by their one value. A single value at the top of 20-30
trials is the highest draw of many noisy ones (the winner's curse); once a configuration has been
confirmed with other seeds, an unconfirmed one cannot overtake it on one lucky seed. Without any
repeat this is the plain best-trial ranking of Optuna's ``study.best_trial``.

*Distinguishable* (:func:`compare_leaders`): Welch's two-sample t-test of the leader's seeds
against the runner-up's, two-sided, at 0.05; it needs two seeds on each side. With three seeds a
side it only separates differences several times the seed-to-seed sd, which is the honest
answer for three seeds. Test metrics are averaged the same way and only ever reported.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

import optuna
from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.study._trial_record import complete_repeats, is_repeat, trial_result

#: Selection rules (how one trial's validation curve becomes one number).
RULES = ("best_epoch", "last_epoch", "last3")
DEFAULT_RULE = "best_epoch"
#: Epochs averaged by the ``last3`` rule.
LAST_K = 3
#: Significance level of the leader-vs-runner-up test.
ALPHA = 0.05


class ConfigScore(NamedTuple):
    """One configuration's evidence: its search trial and the seeds it has run with."""

    number: int  # the search trial's number
    params: dict[str, Any]
    trials: tuple[FrozenTrial, ...]  # the search trial first, then COMPLETE repeats by number
    values: tuple[float, ...]  # the rule's validation score per seed, same order
    mean: float
    sd: float | None  # sample sd (n - 1); None with one seed
    test_accuracy: tuple[float, ...]  # reported only
    test_macro_f1: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def confirmed(self) -> bool:
        """Whether it ran with more than one seed."""
        return self.n > 1

    @property
    def trial(self) -> FrozenTrial:
        """The search trial (its settings are the configuration's)."""
        return self.trials[0]


class LeaderTest(NamedTuple):
    """Leader against runner-up: Welch's t-test (``None`` fields when it cannot be computed)."""

    difference: float  # leader mean - runner-up mean
    t: float | None
    df: float | None
    p: float | None
    distinguishable: bool
    reason: str  # one line for people


class Selection(NamedTuple):
    """The ranking and what it says about the pick."""

    rule: str
    ranking: list[ConfigScore]
    leader_test: LeaderTest | None  # None with fewer than two configurations

    @property
    def best(self) -> ConfigScore | None:
        return self.ranking[0] if self.ranking else None


def trial_score(trial: FrozenTrial, *, rule: str = DEFAULT_RULE) -> float | None:
    """The validation number ``rule`` makes of one COMPLETE trial (``None`` when it has none)."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {', '.join(RULES)}")
    if rule == "best_epoch" or not trial.intermediate_values:
        return trial.value
    curve = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
    if rule == "last_epoch":
        return float(curve[-1])
    tail = curve[-LAST_K:]
    return float(statistics.fmean(tail))


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value)."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def configurations(trials: Sequence[FrozenTrial], *, rule: str = DEFAULT_RULE) -> list[ConfigScore]:
    """Every COMPLETE search trial with its COMPLETE repeats, scored by ``rule`` (unsorted)."""
    repeats = complete_repeats(trials)
    out = []
    for t in trials:
        if is_repeat(t) or t.state != TrialState.COMPLETE or trial_score(t, rule=rule) is None:
            continue
        runs = (t, *repeats.get(t.number, []))
        values = tuple(float(trial_score(r, rule=rule)) for r in runs)
        mean, sd = mean_sd(values)
        out.append(
            ConfigScore(
                number=t.number,
                params=dict(t.params),
                trials=runs,
                values=values,
                mean=mean,
                sd=sd,
                test_accuracy=_reported(runs, "test_accuracy"),
                test_macro_f1=_reported(runs, "test_macro_f1"),
            )
        )
    return out


def _reported(runs: Sequence[FrozenTrial], field: str) -> tuple[float, ...]:
    """The :class:`~deepsc_tune.study._trial_record.TrialResult` ``field`` of each run that has one."""
    values = (getattr(trial_result(r), field) for r in runs)
    return tuple(float(v) for v in values if v is not None)


def rank_configurations(trials: Sequence[FrozenTrial], *, rule: str = DEFAULT_RULE) -> list[ConfigScore]:
    """Configurations best first: confirmed (2+ seeds) by mean, then single-seed ones by value.

    Ties go to the lower trial number (the earlier trial, as Optuna's ``best_trial``).
    """
    return sorted(configurations(trials, rule=rule), key=lambda c: (not c.confirmed, -c.mean, c.number))


def welch_test(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """Welch's t statistic, its degrees of freedom and the two-sided p-value of mean(a) - mean(b).

    ``None`` with fewer than two values on a side. Equal, spread-free samples give p 1 (same
    means) or 0 (different means).
    """
    if len(a) < 2 or len(b) < 2:
        return None
    ma, va = statistics.fmean(a), statistics.variance(a)
    mb, vb = statistics.fmean(b), statistics.variance(b)
    sa, sb = va / len(a), vb / len(b)
    se2 = sa + sb
    diff = ma - mb
    if se2 == 0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff), math.inf, 1.0 if diff == 0 else 0.0)
    t = diff / math.sqrt(se2)
    df = se2**2 / ((sa**2 / (len(a) - 1) if sa else 0.0) + (sb**2 / (len(b) - 1) if sb else 0.0))
    from scipy.stats import t as student_t  # scipy comes with scikit-learn and scanpy

    p = float(2 * student_t.sf(abs(t), df))
    return t, df, p


def compare_leaders(ranking: Sequence[ConfigScore], *, alpha: float = ALPHA) -> LeaderTest | None:
    """Whether the leader's mean is distinguishable from the runner-up's (see the module doc)."""
    if len(ranking) < 2:
        return None
    lead, second = ranking[0], ranking[1]
    diff = lead.mean - second.mean
    result = welch_test(lead.values, second.values)
    if result is None:
        few = [f"trial {c.number}" for c in (lead, second) if c.n < 2]
        return LeaderTest(
            diff,
            None,
            None,
            None,
            False,
            f"not distinguishable from the runner-up (trial {second.number}, "
            f"{diff:+.4f}): {' and '.join(few)} ran with one seed only "
            "(study.confirm or `deepsc-tune repeat` adds seeds)",
        )
    t, df, p = result
    if p < alpha:
        return LeaderTest(
            diff,
            t,
            df,
            p,
            True,
            f"ahead of the runner-up (trial {second.number}) by {diff:+.4f} "
            f"(Welch t-test p={p:.3g}, {lead.n} vs {second.n} seeds)",
        )
    return LeaderTest(
        diff,
        t,
        df,
        p,
        False,
        f"not distinguishable from the runner-up (trial {second.number}, {diff:+.4f}; "
        f"Welch t-test p={p:.3g}, {lead.n} vs {second.n} seeds)",
    )


def select(trials: Sequence[FrozenTrial], *, rule: str = DEFAULT_RULE) -> Selection:
    """Rank the configurations of ``trials`` and test the leader against the runner-up."""
    ranking = rank_configurations(trials, rule=rule)
    return Selection(rule=rule, ranking=ranking, leader_test=compare_leaders(ranking))


def format_mean_sd(c: ConfigScore, digits: int = 4) -> str:
    """``0.9012 ± 0.0040 (n=3)``, or ``0.9012 (n=1)``."""
    if c.sd is None:
        return f"{c.mean:.{digits}f} (n=1)"
    return f"{c.mean:.{digits}f} ± {c.sd:.{digits}f} (n={c.n})"


def format_reported(values: Sequence[float], digits: int = 4) -> str | None:
    """Mean ± sd of reported test values, ``None`` when there are none."""
    if not values:
        return None
    mean, sd = mean_sd(values)
    return f"{mean:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def pick_notes(selection: Selection, number: int, *, metric: str) -> list[str]:
    """Lines for the export's header about trial ``number``: mean ± sd over seeds, vs the runner-up."""
    config = next((c for c in selection.ranking if c.number == number), None)
    notes = []
    if config is not None and config.confirmed:
        notes.append(
            f"{metric} over seeds: {format_mean_sd(config)}; test accuracy "
            f"{format_reported(config.test_accuracy)} / macro-F1 "
            f"{format_reported(config.test_macro_f1)} (reported only)"
        )
    if selection.best is not None and selection.best.number == number and selection.leader_test is not None:
        notes.append(selection.leader_test.reason)
    return notes


def pick_record(selection: Selection, number: int) -> dict[str, Any]:
    """JSON fields about trial ``number``: its runs over seeds and whether it leads distinguishably."""
    config = next((c for c in selection.ranking if c.number == number), None)
    leads = selection.best is not None and selection.best.number == number
    return {
        "seeds": None
        if config is None
        else {
            "n": config.n,
            "mean": config.mean,
            "sd": config.sd,
            "values": list(config.values),
            "trials": [t.number for t in config.trials],
            "test_accuracy": list(config.test_accuracy),
            "test_macro_f1": list(config.test_macro_f1),
        },
        "distinguishable": (
            selection.leader_test.distinguishable if leads and selection.leader_test is not None else None
        ),
    }


def best_search_trial(study: optuna.Study) -> FrozenTrial:
    """The chosen configuration's search trial (:func:`select`: by the mean
    over seeds, confirmed configurations first; without repeats the best value, ties to the lower
    number), the one ranking every command uses.

    Raises
    ------
    DeepscTuneError
        When no trial has completed yet.
    """
    trials = study.get_trials(deepcopy=False)
    best = select(trials).best
    if best is None:
        raise DeepscTuneError(
            f"study '{study.study_name}' has no completed trial yet ({len(trials)} trials in all); "
            "run `deepsc-tune run` first or let it finish a trial"
        )
    return best.trial
