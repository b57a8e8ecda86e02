"""Selection with and without confirmation, evaluated on one finished study (used by compare.py).

After the default search of a benchmark seed, ``compare.py`` confirms the ``k_max`` best
configurations (by search value) with ``n_max`` further seeds (:func:`deepsc_tune.study._confirm.run_confirmation`).
From that one study every smaller variant is replayed without training again: for each selection
rule (:data:`deepsc_tune.study._selection.RULES`) and each ``(K, N)`` with ``K <= k_max``,
``N <= n_max`` (``(0, 0)``: no confirmation), the trials the variant would have had (the search
trials and the repeats of the top K with the first N extra seeds) go through
:func:`deepsc_tune.study._selection.select`, and the pick is recorded with:

- ``val``: the score it was picked on (mean over its seeds under the rule);
- ``val_fresh``: the study metric (best epoch) of the pick on the *held-out* seed, the last
  extra seed (``n_max``), which no variant with ``N < n_max`` saw: an unbiased validation
  estimate of the configuration picked, the only evidence used to choose the shipped defaults;
  ``None`` when the pick is not among the top ``k_max`` (not repeated) or ``N == n_max``;
- ``test_accuracy`` / ``test_macro_f1``: mean over the seeds the variant used for the pick
  (reported only); ``test_*_all``: mean over every run of that configuration in the study;
- ``extra_epochs``: epochs of the repeats the variant would have run.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from deepsc_tune.study import RULES, is_repeat, select, top_trials, trial_result, trial_seed


def _epochs(t: FrozenTrial) -> int:
    return trial_result(t).epochs_run


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.fmean(vals) if vals else None


def repeat_records(trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
    """The repeats of a study as plain records (for compare.json)."""
    out = []
    for t in trials:
        if not is_repeat(t):
            continue
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "repeat_of": int(t.user_attrs["repeat_of"]),
                "repeat_seed": t.user_attrs.get("repeat_seed"),
                "epochs": _epochs(t),
                "value": t.value,
                "curve": [t.intermediate_values[e] for e in sorted(t.intermediate_values)],
                "test_accuracy": trial_result(t).test_accuracy,
                "test_macro_f1": trial_result(t).test_macro_f1,
            }
        )
    return out


def _offset(t: FrozenTrial, base: dict[int, int]) -> int:
    """Which extra seed a repeat is (1 = the first)."""
    return int(t.user_attrs["repeat_seed"]) - base[int(t.user_attrs["repeat_of"])]


def variants(
    trials: Sequence[FrozenTrial],
    *,
    k_max: int,
    n_max: int,
    fixed: Mapping[str, Any],
    rules: Sequence[str] = RULES,
) -> list[dict[str, Any]]:
    """Every (rule, K, N) variant replayed on one confirmed study (see the module doc;
    ``fixed``: the search space's fixed settings, whose seed the search trials ran with)."""
    search = [t for t in trials if not is_repeat(t)]
    by_number = {t.number: t for t in search}
    base = {t.number: trial_seed(t, fixed) for t in search}
    repeats = [t for t in trials if is_repeat(t) and int(t.user_attrs["repeat_of"]) in base]
    order = [t.number for t in top_trials(search, top=k_max)]
    held_out = {
        int(t.user_attrs["repeat_of"]): t
        for t in repeats
        if t.state == TrialState.COMPLETE and _offset(t, base) == n_max
    }
    out = []
    plans = [(0, 0)] + [(k, n) for k in range(1, k_max + 1) for n in range(1, n_max + 1)]
    for rule in rules:
        for k, n in plans:
            chosen = set(order[:k])
            used = [t for t in repeats if int(t.user_attrs["repeat_of"]) in chosen and _offset(t, base) <= n]
            sel = select([*search, *used], rule=rule)
            best = sel.best
            if best is None:
                continue
            everything = [
                by_number[best.number],
                *(
                    t
                    for t in repeats
                    if int(t.user_attrs["repeat_of"]) == best.number and t.state == TrialState.COMPLETE
                ),
            ]
            fresh = held_out.get(best.number) if n < n_max else None
            out.append(
                {
                    "rule": rule,
                    "top": k,
                    "seeds": n,
                    "number": best.number,
                    "n": best.n,
                    "val": best.mean,
                    "val_sd": best.sd,
                    "val_fresh": fresh.value if fresh is not None else None,
                    "distinguishable": bool(sel.leader_test and sel.leader_test.distinguishable),
                    "test_accuracy": _mean(list(best.test_accuracy)),
                    "test_macro_f1": _mean(list(best.test_macro_f1)),
                    "test_accuracy_all": _mean([trial_result(t).test_accuracy for t in everything]),
                    "test_macro_f1_all": _mean([trial_result(t).test_macro_f1 for t in everything]),
                    "extra_epochs": sum(_epochs(t) for t in used),
                }
            )
    return out
